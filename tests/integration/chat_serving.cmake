# End to end (issue 15, section 4): a test model with a byte-level BPE tokenizer.json and a ChatML
# chat template, quantized by spqr-quantize and served by spqr-server: Chat / ChatUnary, Score,
# GetModelInfo's tokenizer kind, hostile chat requests, and a model without a template.
if(TARGET spqr-quantize AND TARGET spqr-server AND TARGET spqr-client)
  add_test(NAME chat_serving_integration
           COMMAND ${SPQR_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/chat_serving_integration_test.py
                   --quantize $<TARGET_FILE:spqr-quantize> --server $<TARGET_FILE:spqr-server>
                   --client $<TARGET_FILE:spqr-client> --root ${SPQR_ROOT}
                   --stubs ${SPQR_PYTHON_STUBS_DIR})
  set_tests_properties(chat_serving_integration PROPERTIES LABELS integration TIMEOUT 120)
endif()
