# Tests on the CPU harness for the CUDA code (label cuda_emu; docs/cuda-harness.md): the harness's
# own behaviour, and the CUDA kernels against the CPU backend's ops, run without a GPU. The same
# test files are also built with AddressSanitizer (harness, kernels and tests instrumented)
# and registered as one ctest, cuda_emu_asan.
if(NOT SPQR_WITH_CUDA_EMU)
  return()
endif()

set(cuda_emu_tests ${CMAKE_CURRENT_LIST_DIR}/harness_test.cc ${CMAKE_CURRENT_LIST_DIR}/kernels_test.cc
                   ${CMAKE_CURRENT_LIST_DIR}/forward_kernels_test.cc)
spqr_add_gtest(cuda_emu_test SOURCES ${cuda_emu_tests}
               LIBS spqr_engine_cuda_emu spqr_engine_cpu LABELS cuda_emu)

# The GPU SpQR layout and kernels (spqr_gpu_layout.h, spqr_gpu_linear.cuh), forward and reverse.
spqr_add_gtest(spqr_gpu_emu_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/spqr_gpu_test.cc
               LIBS spqr_engine_cuda_emu spqr_engine_cpu LABELS cuda_emu)

add_test(NAME cuda_emu_env_order
         COMMAND cuda_emu_test --gtest_filter=HarnessTest.InitialScheduleComesFromTheEnvironment)
set_tests_properties(cuda_emu_env_order PROPERTIES LABELS cuda_emu
                                                   ENVIRONMENT "SPQR_CUDA_EMU_ORDER=shuffle:42")

add_executable(cuda_emu_asan_test ${cuda_emu_tests})
target_link_libraries(cuda_emu_asan_test PRIVATE spqr_engine_cuda_emu_asan spqr_engine_cpu
                                                 GTest::gtest GTest::gmock GTest::gtest_main)
target_include_directories(cuda_emu_asan_test PRIVATE ${SPQR_ROOT})
# One ctest for the whole binary (its death tests fork, which is slow under ASan when each case
# is its own process). detect_leaks=0: LeakSanitizer needs ptrace, which containers often deny.
add_test(NAME cuda_emu_asan COMMAND cuda_emu_asan_test)
set_tests_properties(cuda_emu_asan PROPERTIES LABELS cuda_emu TIMEOUT 600
                     ENVIRONMENT "ASAN_OPTIONS=detect_leaks=0:detect_stack_use_after_return=0")

# The GPU test suite (tests/gpu, written for a device) run unchanged on the harness: the same
# parity checks against their double-precision twins, on the same shapes, without a GPU. Its
# threads and blocks run in a shuffled order (cuda_emu_test covers forward and reverse).
file(GLOB gpu_suite_src CONFIGURE_DEPENDS ${SPQR_ROOT}/tests/gpu/*_test.cc)
add_executable(cuda_emu_gpu_suite_test ${gpu_suite_src} ${CMAKE_CURRENT_LIST_DIR}/ptx_probe_emu.cc)
# spqr_engine_cpu: paged_attention_test compares with the CPU backend's ops.
target_link_libraries(cuda_emu_gpu_suite_test PRIVATE spqr_engine_cuda_emu spqr_engine_cpu
                                                      GTest::gtest GTest::gmock GTest::gtest_main)
target_include_directories(cuda_emu_gpu_suite_test PRIVATE ${SPQR_ROOT})
gtest_discover_tests(cuda_emu_gpu_suite_test TEST_PREFIX "emu."
                     PROPERTIES LABELS cuda_emu ENVIRONMENT "SPQR_CUDA_EMU_ORDER=shuffle:1"
                                SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]" DISCOVERY_TIMEOUT 60)

# The GPU benchmark program end to end on the harness (tiny shapes; its times mean nothing).
add_test(NAME spqr_gpu_bench_smoke
         COMMAND spqr_gpu_bench_emu --smoke --out ${CMAKE_BINARY_DIR}/spqr_gpu_bench_smoke.json)
set_tests_properties(spqr_gpu_bench_smoke PROPERTIES LABELS cuda_emu)
add_test(NAME spqr_gpu_bench_table_smoke
         COMMAND ${SPQR_PYTHON} ${SPQR_ROOT}/bench/gpu/make_gpu_table.py
                 ${CMAKE_BINARY_DIR}/spqr_gpu_bench_smoke.json)
set_tests_properties(spqr_gpu_bench_smoke PROPERTIES FIXTURES_SETUP spqr_gpu_bench_json)
set_tests_properties(spqr_gpu_bench_table_smoke PROPERTIES LABELS cuda_emu
                                                           FIXTURES_REQUIRED spqr_gpu_bench_json)

# The CUDA backend end to end (--backend cuda/auto through the loader, the real engine) against
# the CPU backend on the test model and the reference model, dense and SpQR-quantized at test
# time (tests/cuda_emu/cuda_backend_e2e_test.cc).
# One ctest for the binary: the SpQR model is quantized once per process (about 5 s), and the
# CPU backend's OpenMP threads must not spin while the harness runs kernels on the main thread.
add_executable(cuda_backend_e2e_test ${CMAKE_CURRENT_LIST_DIR}/cuda_backend_e2e_test.cc)
target_link_libraries(cuda_backend_e2e_test PRIVATE spqr_engine_runtime_emu spqr_quantizer_lib
                                                    spqr_engine_cuda_emu spqr_engine_cpu
                                                    GTest::gtest GTest::gmock GTest::gtest_main)
target_include_directories(cuda_backend_e2e_test PRIVATE ${SPQR_ROOT})
target_compile_definitions(cuda_backend_e2e_test PRIVATE SPQR_SOURCE_DIR="${SPQR_ROOT}")
add_test(NAME cuda_backend_e2e COMMAND cuda_backend_e2e_test)
set_tests_properties(cuda_backend_e2e PROPERTIES LABELS cuda_emu TIMEOUT 600
                     ENVIRONMENT "OMP_WAIT_POLICY=passive")

# tools/gpu_logits_check.py (the device's end-to-end logits check, run by tools/gpu-check.sh) on
# the harness: spqr-dump-logits built against the CUDA backend on the CPU harness, its
# --backend cuda logits against its --backend cpu logits on the test model (prefill in ragged
# chunks, decode steps, a scrambled paged block table).
add_executable(spqr-dump-logits-emu ${SPQR_ROOT}/tests/tools/dump_logits.cc)
target_link_libraries(spqr-dump-logits-emu PRIVATE spqr_engine_cuda_emu spqr_engine_cpu
                                                   absl::strings)
target_compile_definitions(spqr-dump-logits-emu PRIVATE SPQR_WITH_CUDA=1)
target_include_directories(spqr-dump-logits-emu PRIVATE ${SPQR_ROOT})
add_test(NAME gpu_logits_check_emu
         COMMAND ${SPQR_PYTHON} ${SPQR_ROOT}/tools/gpu_logits_check.py
                 --dump-logits $<TARGET_FILE:spqr-dump-logits-emu>
                 --out ${CMAKE_BINARY_DIR}/gpu_logits_check_emu.json
                 --vs-cpu ${SPQR_ROOT}/tests/data/test-model)
set_tests_properties(gpu_logits_check_emu PROPERTIES LABELS "cuda_emu;python" TIMEOUT 300)
