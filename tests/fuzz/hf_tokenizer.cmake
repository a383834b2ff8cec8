# libFuzzer target for the tokenizer.json implementation (see common.cmake).
include(${CMAKE_CURRENT_LIST_DIR}/common.cmake)
if(SPQR_FUZZ)
  file(GLOB hf_tokenizer_src CONFIGURE_DEPENDS ${SPQR_ROOT}/engine/tokenizer/hf_*.cc)
  add_executable(hf_tokenizer_fuzz ${CMAKE_CURRENT_LIST_DIR}/hf_tokenizer_fuzz.cc
                                   ${hf_tokenizer_src} ${SPQR_ROOT}/engine/tokenizer/utf8.cc
                                   ${SPQR_ROOT}/engine/tokenizer/tokenizer.cc
                                   ${SPQR_ROOT}/engine/tokenizer/sentencepiece_tokenizer.cc)
  target_include_directories(hf_tokenizer_fuzz PRIVATE ${SPQR_ROOT})
  target_compile_definitions(hf_tokenizer_fuzz PRIVATE SPQR_SOURCE_DIR="${SPQR_ROOT}")
  target_compile_options(hf_tokenizer_fuzz PRIVATE ${SPQR_FUZZ_FLAGS})
  target_link_options(hf_tokenizer_fuzz PRIVATE ${SPQR_FUZZ_FLAGS})
  target_link_libraries(hf_tokenizer_fuzz PRIVATE PkgConfig::PCRE2 PkgConfig::UTF8PROC
                                                  PkgConfig::SENTENCEPIECE
                                                  nlohmann_json::nlohmann_json absl::status
                                                  absl::statusor absl::strings)
  spqr_add_fuzz_test(hf_tokenizer 3000 -max_len=2048)
endif()
