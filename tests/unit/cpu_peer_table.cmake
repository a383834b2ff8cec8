# docs/cpu-performance.md's llama.cpp peer table must be the one bench/peer/make_peer_table.py makes
# from the committed raw JSON that the table names.
add_test(NAME cpu_peer_table_matches_results
         COMMAND ${SPQR_PYTHON} ${SPQR_ROOT}/bench/peer/make_peer_table.py
                 --md docs/cpu-performance.md --check
         WORKING_DIRECTORY ${SPQR_ROOT})
set_tests_properties(cpu_peer_table_matches_results PROPERTIES LABELS "lint")
