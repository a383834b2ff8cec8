# CUDA backend tests (label `gpu`). They build wherever the CUDA toolkit is found (CI compiles them
# for sm_90) and skip with the reason when no usable device is present; ctest then reports them as
# skipped, not passed (SKIP_REGULAR_EXPRESSION on gtest's "[  SKIPPED ]" line).
# cuda_status_test needs no device: it checks the error mapping, the device query's clean failure
# and the launch functions' argument validation.
if(NOT SPQR_WITH_CUDA)
  return()
endif()

function(spqr_add_gpu_gtest name)
  cmake_parse_arguments(T "" "" "SOURCES" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  # cudart: the tests call the runtime directly (synchronize) and include the backend's headers,
  # which name CUDA types. The shared cudart loads libcuda.so.1 only on the first CUDA call, so
  # these binaries start (and skip) on machines without the driver; cuBLAS is dlopened by the
  # backend (cublas_api.h).
  target_link_libraries(${name} PRIVATE spqr_engine_cuda spqr_engine_core CUDA::cudart
                                        GTest::gtest GTest::gmock GTest::gtest_main)
  target_include_directories(${name} PRIVATE ${SPQR_ROOT})
  gtest_discover_tests(${name} PROPERTIES LABELS gpu SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]"
                       DISCOVERY_TIMEOUT 60)
endfunction()

spqr_add_gpu_gtest(cuda_status_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/cuda_status_test.cc)
spqr_add_gpu_gtest(cuda_ops_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/cuda_ops_test.cc)
spqr_add_gpu_gtest(cublas_gemm_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/cublas_gemm_test.cc)
spqr_add_gpu_gtest(spqr_kernels_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/spqr_kernels_test.cc)
# Parity with the CPU backend's KV-cache ops, so it links them.
spqr_add_gpu_gtest(paged_attention_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/paged_attention_test.cc)
target_link_libraries(paged_attention_test PRIVATE spqr_engine_cpu)
spqr_add_gpu_gtest(spqr_gpu_linear_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/spqr_gpu_linear_test.cc)
spqr_add_gpu_gtest(ptx_wrappers_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/ptx_wrappers_test.cc
                                             ${CMAKE_CURRENT_LIST_DIR}/ptx_probe.cu)
# The fused tensor-core SpQR kernel (LaunchSpqrGpuLinear's kMma path) against SpqrMatmul.
spqr_add_gpu_gtest(spqr_gpu_mma_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/spqr_gpu_mma_test.cc)
