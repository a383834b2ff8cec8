# Unit tests of server/ (request validation and conversion, metric table vs docs/metrics.md).
if(TARGET spqr_server_lib)
  find_package(prometheus-cpp CONFIG REQUIRED)
  spqr_add_gtest(server_request_validation_test
                 SOURCES ${CMAKE_CURRENT_LIST_DIR}/server_request_validation_test.cc
                 LIBS spqr_server_lib LABELS unit)
  spqr_add_gtest(server_metrics_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/server_metrics_test.cc
                 LIBS spqr_server_lib prometheus-cpp::core LABELS unit)
endif()
if(TARGET spqr_server_lib)
  spqr_add_gtest(server_retry_pushback_test
                 SOURCES ${CMAKE_CURRENT_LIST_DIR}/server_retry_pushback_test.cc
                 LIBS spqr_server_lib LABELS unit)
endif()
if(TARGET spqr_server_lib)
  spqr_add_gtest(server_api_keys_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/server_api_keys_test.cc
                 LIBS spqr_server_lib LABELS unit)
endif()
if(TARGET spqr_server_lib)
  spqr_add_gtest(server_model_info_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/server_model_info_test.cc
                 LIBS spqr_server_lib LABELS unit)
endif()
if(TARGET spqr_server_lib)
  spqr_add_gtest(server_health_reflection_test
                 SOURCES ${CMAKE_CURRENT_LIST_DIR}/server_health_reflection_test.cc
                 LIBS spqr_server_lib prometheus-cpp::core LABELS unit)
endif()
if(TARGET spqr_server_lib)
  # Raw client bytes (issue 14): request parsing naming the field, LogSafe, the tokenizing pool;
  # start-up checks (TLS key vs certificate, listen errors, model.dir).
  spqr_add_gtest(server_request_parsing_test
                 SOURCES ${CMAKE_CURRENT_LIST_DIR}/server_request_parsing_test.cc
                 LIBS spqr_server_lib LABELS unit)
  find_package(OpenSSL REQUIRED)
  spqr_add_gtest(server_startup_checks_test
                 SOURCES ${CMAKE_CURRENT_LIST_DIR}/server_startup_checks_test.cc
                 LIBS spqr_server_lib OpenSSL::Crypto LABELS unit)
endif()
