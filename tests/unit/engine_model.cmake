# Model loading layer: safetensors, checkpoint directories, config.json, weight binding, tokenizer.
spqr_add_gtest(safetensors_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/safetensors_test.cc
               LIBS spqr_engine_core LABELS unit)
spqr_add_gtest(model_config_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/model_config_test.cc
               LIBS spqr_engine_core LABELS unit)
spqr_add_gtest(llama_weights_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/llama_weights_test.cc
               LIBS spqr_engine_core LABELS unit)
spqr_add_gtest(tokenizer_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/tokenizer_test.cc
               LIBS spqr_engine_core LABELS unit)
# tokenizer.json against Hugging Face tokenizers: the committed reference results
# (tools/make_hf_tokenizer_fixtures.py), and, where `tokenizers` is importable, the script's check
# plus fresh random cases (skipped otherwise).
spqr_add_gtest(hf_tokenizer_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/hf_tokenizer_test.cc
               LIBS spqr_engine_runtime nlohmann_json::nlohmann_json LABELS unit)
find_program(SPQR_TOKENIZERS_PYTHON NAMES python3
             DOC "Python for the tokenizers reference check (needs `pip install tokenizers`)")
add_test(NAME hf_tokenizer.reference
         COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/check_hf_tokenizer_reference.sh
                 ${SPQR_TOKENIZERS_PYTHON} $<TARGET_FILE:hf_tokenizer_test>)
set_tests_properties(hf_tokenizer.reference PROPERTIES LABELS "python" TIMEOUT 120
                     SKIP_RETURN_CODE 77)
