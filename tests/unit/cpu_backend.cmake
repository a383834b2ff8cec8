# CPU backend: each op against a naive reference, the backend's forward-step contract, and the
# whole forward against the independent numpy reference (tools/reference_forward.py).
spqr_add_gtest(cpu_ops_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/cpu_ops_test.cc
               LIBS spqr_engine_cpu LABELS unit)
spqr_add_gtest(cpu_backend_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/cpu_backend_test.cc
               LIBS spqr_engine_cpu LABELS unit)

# Writes the CPU backend's logits for a token sequence as .npy (prefill chunks + decode steps).
add_executable(spqr-dump-logits ${SPQR_ROOT}/tests/tools/dump_logits.cc)
target_link_libraries(spqr-dump-logits PRIVATE spqr_engine_cpu absl::strings)

add_test(NAME cpu_reference_forward_test
         COMMAND ${SPQR_PYTHON} ${SPQR_ROOT}/tests/tools/reference_forward_test.py
                 --dump-logits $<TARGET_FILE:spqr-dump-logits> --source-dir ${SPQR_ROOT})
set_tests_properties(cpu_reference_forward_test PROPERTIES LABELS "python;cpu" TIMEOUT 300)
