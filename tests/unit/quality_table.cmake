# docs/quality.md's table must be the one bench/quality/make_quality_table.py makes from the
# committed raw results (no plot: CI has no matplotlib).
add_test(NAME quality_table_matches_results
         COMMAND ${SPQR_PYTHON} ${SPQR_ROOT}/bench/quality/make_quality_table.py
                 bench/results/quality/reference_2026-11-23.jsonl --md docs/quality.md --check
         WORKING_DIRECTORY ${SPQR_ROOT})
set_tests_properties(quality_table_matches_results PROPERTIES LABELS "lint")
