# Zero-shot multiple-choice check through the Score RPC (issue 16, item 5): the tool
# bench/zeroshot/run_zeroshot.py on a tiny set (committed items plus a planted item whose answer is
# clearly the most likely to the model) against the real spqr-server on the test model, and the
# page docs/zeroshot.md against the committed raw results. 15-25 s and 1 s on the loaded 2-core VM
# (the TIMEOUT leaves room for a starved machine: niced under load it took over 120 s once).
if(TARGET spqr-server AND TARGET spqr-client)
  add_test(NAME zeroshot_tool
           COMMAND ${SPQR_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/zeroshot_test.py
                   --server $<TARGET_FILE:spqr-server> --client $<TARGET_FILE:spqr-client>
                   --model ${SPQR_ROOT}/tests/data/test-model --stubs ${SPQR_PYTHON_STUBS_DIR})
  set_tests_properties(zeroshot_tool PROPERTIES LABELS integration TIMEOUT 300)
endif()

# docs/zeroshot.md's tables are generated from the committed raw results; fail when they drift.
add_test(NAME zeroshot_table_matches_results
         COMMAND ${SPQR_PYTHON} ${SPQR_ROOT}/bench/zeroshot/make_zeroshot_table.py
                 ${SPQR_ROOT}/bench/results/zeroshot/reference_2026-12-04.json
                 ${SPQR_ROOT}/bench/results/zeroshot/smollm2-135m-instruct_2026-12-04.json
                 --md ${SPQR_ROOT}/docs/zeroshot.md --check)
set_tests_properties(zeroshot_table_matches_results PROPERTIES LABELS quality TIMEOUT 60)
