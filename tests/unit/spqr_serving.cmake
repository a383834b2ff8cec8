# Serving SpQR model directories on the CPU backend (quantizes the test model at test time).
spqr_add_gtest(spqr_serving_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/spqr_serving_test.cc
                       ${CMAKE_CURRENT_LIST_DIR}/dequantized_model_writer.cc
               LIBS spqr_quantizer_lib spqr_engine_runtime LABELS unit quantizer)
# Load-time refusals: non-finite weights, inconsistent SpQR model directories.
spqr_add_gtest(finite_weights_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/finite_weights_test.cc
               LIBS spqr_quantizer_lib spqr_engine_runtime LABELS unit quantizer)
spqr_add_gtest(model_consistency_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/model_consistency_test.cc
               LIBS spqr_quantizer_lib spqr_engine_runtime LABELS unit quantizer)
