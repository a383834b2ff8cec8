# libFuzzer targets for the server's untrusted inputs: request bytes (parsing, validation,
# LogSafe) and the YAML configuration (see common.cmake).
include(${CMAKE_CURRENT_LIST_DIR}/common.cmake)
if(SPQR_FUZZ AND TARGET spqr_proto)
  find_package(yaml-cpp REQUIRED)
  # The messages are compiled in (not spqr_proto): spqr_grpc links with --exclude-libs,ALL, which
  # would also hide the ASan runtime's malloc/free from the shared libraries (absl), so memory
  # allocated on one side would be freed by the other. Only libprotobuf.a is hidden here, for the
  # reason spqr_grpc gives (SentencePiece's own protobuf copy).
  set(spqr_pb ${CMAKE_BINARY_DIR}/proto/gen/spqr/v1/spqr.pb.cc)
  # The whole tokenizer module (SentencePiece and tokenizer.json implementations).
  file(GLOB spqr_tokenizer_src CONFIGURE_DEPENDS ${SPQR_ROOT}/engine/tokenizer/*.cc)
  set_source_files_properties(${spqr_pb} PROPERTIES GENERATED TRUE COMPILE_OPTIONS -w)
  add_executable(request_fuzz ${CMAKE_CURRENT_LIST_DIR}/request_fuzz.cc ${spqr_pb}
                              ${SPQR_ROOT}/server/request_parsing.cc
                              ${SPQR_ROOT}/server/request_validation.cc
                              ${SPQR_ROOT}/server/log.cc
                              ${spqr_tokenizer_src})
  add_dependencies(request_fuzz spqr_proto)  # generates spqr.pb.cc
  target_include_directories(request_fuzz PRIVATE ${SPQR_ROOT} ${CMAKE_BINARY_DIR}/proto/gen
                                                  ${Protobuf_INCLUDE_DIRS})
  target_compile_options(request_fuzz PRIVATE ${SPQR_FUZZ_FLAGS})
  target_link_options(request_fuzz PRIVATE ${SPQR_FUZZ_FLAGS} "LINKER:--exclude-libs,libprotobuf.a")
  target_link_libraries(request_fuzz PRIVATE ${SPQR_GRPCXX_SHARED} ${SPQR_GRPC_SHARED}
                                             ${SPQR_GPR_SHARED} ${SPQR_PROTOBUF_STATIC} ${SPQR_ZLIB}
                                             PkgConfig::SENTENCEPIECE PkgConfig::PCRE2
                                             PkgConfig::UTF8PROC nlohmann_json::nlohmann_json
                                             absl::status absl::statusor
                                             absl::strings absl::str_format absl::time
                                             absl::synchronization Threads::Threads)
  add_executable(config_fuzz ${CMAKE_CURRENT_LIST_DIR}/config_fuzz.cc
                             ${SPQR_ROOT}/config/server_config.cc)
  target_include_directories(config_fuzz PRIVATE ${SPQR_ROOT})
  target_compile_options(config_fuzz PRIVATE ${SPQR_FUZZ_FLAGS})
  target_link_options(config_fuzz PRIVATE ${SPQR_FUZZ_FLAGS})
  target_link_libraries(config_fuzz PRIVATE yaml-cpp absl::status absl::statusor absl::strings
                                            absl::str_format)
  spqr_add_fuzz_test(request 20000 -max_len=4096)
  spqr_add_fuzz_test(config 20000 -max_len=4096)
endif()
