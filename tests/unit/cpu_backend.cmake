# CPU backend: each op against a naive reference, the backend's forward-step contract, and the
# whole forward against the independent numpy reference (tools/reference_forward.py).
spqr_add_gtest(cpu_ops_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/cpu_ops_test.cc
               LIBS spqr_engine_cpu LABELS unit)
spqr_add_gtest(spqr_tile_kernel_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/spqr_tile_kernel_test.cc
               LIBS spqr_engine_cpu LABELS unit)
spqr_add_gtest(linear_bf16_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/linear_bf16_test.cc
               LIBS spqr_engine_cpu LABELS unit)
spqr_add_gtest(linear_gemm_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/linear_gemm_test.cc
               LIBS spqr_engine_cpu LABELS unit)
spqr_add_gtest(worker_pool_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/worker_pool_test.cc
               LIBS spqr_engine_cpu Threads::Threads LABELS unit)
spqr_add_gtest(cpu_backend_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/cpu_backend_test.cc
               LIBS spqr_engine_cpu LABELS unit)

# Writes the CPU backend's logits for a token sequence as .npy (prefill chunks + decode steps).
add_executable(spqr-dump-logits ${SPQR_ROOT}/tests/tools/dump_logits.cc)
target_link_libraries(spqr-dump-logits PRIVATE spqr_engine_cpu absl::strings)
if(SPQR_WITH_CUDA)
  # --backend cuda (tools/gpu-check.sh compares it with transformers on the device).
  target_link_libraries(spqr-dump-logits PRIVATE spqr_engine_cuda)
  target_compile_definitions(spqr-dump-logits PRIVATE SPQR_WITH_CUDA=1)
endif()

add_test(NAME cpu_reference_forward_test
         COMMAND ${SPQR_PYTHON} ${SPQR_ROOT}/tests/tools/reference_forward_test.py
                 --dump-logits $<TARGET_FILE:spqr-dump-logits> --source-dir ${SPQR_ROOT})
# Passive OpenMP waiting: CI machines run tests side by side, where spinning threads starve.
set_tests_properties(cpu_reference_forward_test PROPERTIES LABELS "python;cpu" TIMEOUT 300
                     ENVIRONMENT OMP_WAIT_POLICY=passive)

# The same op and backend tests with the CPU sources compiled for the narrower SIMD paths of
# engine/backend/cpu/simd.h (AVX2+FMA+F16C, and the portable scalar fallback), so every path is
# checked on this machine whatever -march=native picks for the main build.
file(GLOB spqr_cpu_backend_sources CONFIGURE_DEPENDS ${SPQR_ROOT}/engine/backend/cpu/*.cc)
foreach(variant avx2 portable)
  if(variant STREQUAL "avx2")
    set(flags -mno-avx512f -mavx2 -mfma -mf16c)
  else()
    set(flags -mno-avx512f -mno-avx2 -mno-fma -mno-f16c -mno-avx)
  endif()
  spqr_add_gtest(cpu_ops_${variant}_test
                 SOURCES ${CMAKE_CURRENT_LIST_DIR}/cpu_ops_test.cc
                         ${CMAKE_CURRENT_LIST_DIR}/cpu_backend_test.cc
                         ${CMAKE_CURRENT_LIST_DIR}/linear_gemm_test.cc ${spqr_cpu_backend_sources}
                 LIBS spqr_engine_forward OpenMP::OpenMP_CXX LABELS unit)
  target_compile_options(cpu_ops_${variant}_test PRIVATE ${flags})
endforeach()

# CpuForwardOps' buffer ops and its refusal of buffers that do not fit an op.
spqr_add_gtest(cpu_forward_ops_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/cpu_forward_ops_test.cc
               LIBS spqr_engine_cpu LABELS unit)
