# Quantizer algorithms and the SpQR format module (engine/format).
find_package(Eigen3 3.3 REQUIRED NO_MODULE)
find_package(OpenMP REQUIRED)
set(quant_libs spqr_quantizer_lib spqr_engine_core Eigen3::Eigen)
spqr_add_gtest(spqr_format_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/spqr_format_test.cc
               LIBS ${quant_libs} LABELS unit quantizer)
spqr_add_gtest(spqr_fp16_arithmetic_test
               SOURCES ${CMAKE_CURRENT_LIST_DIR}/spqr_fp16_arithmetic_test.cc
               LIBS ${quant_libs} LABELS unit quantizer)
spqr_add_gtest(bits_formula_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/bits_formula_test.cc
               LIBS ${quant_libs} LABELS unit quantizer)
spqr_add_gtest(gptq_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/gptq_test.cc
               LIBS ${quant_libs} LABELS unit quantizer)
spqr_add_gtest(rtn_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/rtn_test.cc
               LIBS ${quant_libs} LABELS unit quantizer)
spqr_add_gtest(spqr_layer_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/spqr_layer_test.cc
               LIBS ${quant_libs} LABELS unit quantizer)
spqr_add_gtest(model_quantizer_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/model_quantizer_test.cc
               LIBS ${quant_libs} LABELS unit quantizer)
spqr_add_gtest(quantizer_output_dir_test
               SOURCES ${CMAKE_CURRENT_LIST_DIR}/quantizer_output_dir_test.cc
               LIBS ${quant_libs} LABELS unit quantizer)
# Runs the built tools (--help of every binary, signals during a real spqr-quantize run).
spqr_add_gtest(quantizer_cli_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/quantizer_cli_test.cc
               LIBS absl::strings LABELS unit quantizer)
add_dependencies(quantizer_cli_test spqr-quantize spqr-eval spqr-server spqr-client spqr-bench-cpu
                 spqr-bench-finite-check)
