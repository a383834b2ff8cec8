# bench/loadgen_gain.py (the server-gain figures in docs/cpu-performance.md) runs on the committed
# loadgen results it was written for.
add_test(NAME loadgen_gain_on_committed_results
         COMMAND ${SPQR_PYTHON} ${SPQR_ROOT}/bench/loadgen_gain.py
                 --before "bench/results/cpu-kernels/loadgen_synth-spqr-w4_base-f467af9_2026-12-05-r*.json"
                 --after "bench/results/cpu-kernels/loadgen_synth-spqr-w4_int8_2026-12-05-r*.json"
         WORKING_DIRECTORY ${SPQR_ROOT})
set_tests_properties(loadgen_gain_on_committed_results PROPERTIES LABELS "lint")
