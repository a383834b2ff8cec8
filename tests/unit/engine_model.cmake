# Model loading layer: safetensors, checkpoint directories, config.json, weight binding, tokenizer.
spqr_add_gtest(safetensors_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/safetensors_test.cc
               LIBS spqr_engine_core LABELS unit)
spqr_add_gtest(model_config_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/model_config_test.cc
               LIBS spqr_engine_core LABELS unit)
spqr_add_gtest(llama_weights_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/llama_weights_test.cc
               LIBS spqr_engine_core LABELS unit)
spqr_add_gtest(tokenizer_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/tokenizer_test.cc
               LIBS spqr_engine_core LABELS unit)
