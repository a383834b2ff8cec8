# libFuzzer target for the safetensors parser (see common.cmake).
include(${CMAKE_CURRENT_LIST_DIR}/common.cmake)
if(SPQR_FUZZ)
  add_executable(safetensors_fuzz ${CMAKE_CURRENT_LIST_DIR}/safetensors_fuzz.cc
                                  ${SPQR_ROOT}/engine/model/safetensors.cc
                                  ${SPQR_ROOT}/engine/model/tensor.cc)
  target_include_directories(safetensors_fuzz PRIVATE ${SPQR_ROOT})
  target_compile_options(safetensors_fuzz PRIVATE ${SPQR_FUZZ_FLAGS})
  target_link_options(safetensors_fuzz PRIVATE ${SPQR_FUZZ_FLAGS})
  target_link_libraries(safetensors_fuzz PRIVATE absl::status absl::statusor absl::strings
                                                 nlohmann_json::nlohmann_json)
  spqr_add_fuzz_test(safetensors 5000 -max_len=4096
                     -dict=${CMAKE_CURRENT_LIST_DIR}/safetensors.dict)
endif()
