# docs/quality.md's table must be the one bench/quality/make_quality_table.py makes from the
# committed raw results (no plot: CI has no matplotlib).
add_test(NAME quality_table_matches_results
         COMMAND ${SPQR_PYTHON} ${SPQR_ROOT}/bench/quality/make_quality_table.py
                 bench/results/quality/reference_2026-11-23.jsonl --md docs/quality.md --check
         WORKING_DIRECTORY ${SPQR_ROOT})
set_tests_properties(quality_table_matches_results PROPERTIES LABELS "lint")
# The page's second table (SmolLM2-135M-Instruct, section "smollm2" of the markers).
add_test(NAME quality_table_smollm2_matches_results
         COMMAND ${SPQR_PYTHON} ${SPQR_ROOT}/bench/quality/make_quality_table.py
                 bench/results/quality/smollm2_2026-12-04.jsonl --md docs/quality.md
                 --section smollm2 --check
         WORKING_DIRECTORY ${SPQR_ROOT})
set_tests_properties(quality_table_smollm2_matches_results PROPERTIES LABELS "lint")
