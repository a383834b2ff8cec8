# docs/gpu-performance.md's model table must be the one bench/gpu/perf_model.py computes (from the
# layout formulas, the kernels' instruction counts and the committed ptxas resource record).
add_test(NAME gpu_perf_model_table
         COMMAND ${SPQR_PYTHON} ${SPQR_ROOT}/bench/gpu/perf_model.py
                 --check docs/gpu-performance.md
         WORKING_DIRECTORY ${SPQR_ROOT})
set_tests_properties(gpu_perf_model_table PROPERTIES LABELS "lint")
