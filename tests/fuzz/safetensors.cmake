# libFuzzer target for the safetensors parser. Off by default: it needs clang
# (cmake -DSPQR_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++). The parser's sources are compiled into the
# target itself so they get the fuzzer's coverage instrumentation; a short fixed-seed run is
# registered as a ctest (label fuzz).
option(SPQR_FUZZ "Build the libFuzzer targets (requires clang)" OFF)
if(SPQR_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "SPQR_FUZZ=ON needs clang (-DCMAKE_CXX_COMPILER=clang++), not ${CMAKE_CXX_COMPILER_ID}")
  endif()
  add_executable(safetensors_fuzz ${CMAKE_CURRENT_LIST_DIR}/safetensors_fuzz.cc
                                  ${SPQR_ROOT}/engine/model/safetensors.cc
                                  ${SPQR_ROOT}/engine/model/tensor.cc)
  target_include_directories(safetensors_fuzz PRIVATE ${SPQR_ROOT})
  target_compile_options(safetensors_fuzz PRIVATE -fsanitize=fuzzer,address,undefined -g)
  target_link_options(safetensors_fuzz PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_libraries(safetensors_fuzz PRIVATE absl::status absl::statusor absl::strings
                                                 nlohmann_json::nlohmann_json)
  # New inputs go to the first corpus directory, so that one lives in the build tree.
  set(spqr_fuzz_work ${CMAKE_BINARY_DIR}/fuzz/safetensors_corpus)
  file(MAKE_DIRECTORY ${spqr_fuzz_work})
  add_test(NAME safetensors_fuzz.smoke
           COMMAND safetensors_fuzz -runs=5000 -seed=1 -max_total_time=90 -max_len=4096
                   -dict=${CMAKE_CURRENT_LIST_DIR}/safetensors.dict
                   ${spqr_fuzz_work} ${CMAKE_CURRENT_LIST_DIR}/corpus/safetensors)
  set_tests_properties(safetensors_fuzz.smoke PROPERTIES LABELS fuzz TIMEOUT 120)
endif()
