# EvaluatePerplexity's engine and reference forwards (quantizer/perplexity.h) against each other
# (quantizes the test model at test time).
spqr_add_gtest(perplexity_forward_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/perplexity_forward_test.cc
                       ${CMAKE_CURRENT_LIST_DIR}/dequantized_model_writer.cc
               LIBS spqr_quantizer_lib spqr_engine_core LABELS unit quantizer)
