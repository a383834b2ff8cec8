# libFuzzer target for chat templates (engine/chat), see common.cmake. The seeds are real chat
# templates (copies of tests/data/chat_templates/templates/*.jinja).
include(${CMAKE_CURRENT_LIST_DIR}/common.cmake)
if(SPQR_FUZZ)
  file(GLOB chat_src CONFIGURE_DEPENDS ${SPQR_ROOT}/engine/chat/*.cc)
  # utf8.cc: the tokenizers' UTF-8 helpers, which engine/chat uses.
  add_executable(chat_template_fuzz ${CMAKE_CURRENT_LIST_DIR}/chat_template_fuzz.cc ${chat_src}
                                    ${SPQR_ROOT}/engine/tokenizer/utf8.cc)
  target_include_directories(chat_template_fuzz PRIVATE ${SPQR_ROOT})
  target_compile_options(chat_template_fuzz PRIVATE ${SPQR_FUZZ_FLAGS})
  target_link_options(chat_template_fuzz PRIVATE ${SPQR_FUZZ_FLAGS})
  target_link_libraries(chat_template_fuzz PRIVATE absl::status absl::statusor absl::strings
                                                   nlohmann_json::nlohmann_json)
  spqr_add_fuzz_test(chat_template 5000 -max_len=8192
                     -dict=${CMAKE_CURRENT_LIST_DIR}/chat_template.dict)
endif()
