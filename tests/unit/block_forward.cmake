# The quantizer's fp32 reference forward (quantizer/block_forward.cc) and the perplexity evaluator.
spqr_add_gtest(block_forward_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/block_forward_test.cc
               LIBS spqr_quantizer_lib spqr_engine_cpu spqr_engine_core nlohmann_json::nlohmann_json
               LABELS unit quantizer)
