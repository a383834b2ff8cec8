# End to end (issue 3): quantize the test model with the real spqr-quantize, evaluate it with the
# real spqr-eval, serve it with the real spqr-server and check over gRPC that Score reproduces
# spqr-eval's total NLL / perplexity on the same windows.
if(TARGET spqr-quantize AND TARGET spqr-eval AND TARGET spqr-server AND TARGET spqr-client)
  add_test(NAME spqr_serving_integration
           COMMAND ${SPQR_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/spqr_serving_integration_test.py
                   --quantize $<TARGET_FILE:spqr-quantize> --eval $<TARGET_FILE:spqr-eval>
                   --server $<TARGET_FILE:spqr-server> --client $<TARGET_FILE:spqr-client>
                   --model ${SPQR_ROOT}/tests/data/test-model
                   --calibration ${SPQR_ROOT}/tools/test_model_text.txt
                   --stubs ${SPQR_PYTHON_STUBS_DIR})
  set_tests_properties(spqr_serving_integration PROPERTIES LABELS integration TIMEOUT 120)
endif()
