# spqr-convert (issue 15, section 3): a transformers SpQR checkpoint written by the test from the
# layout description, converted, decoded independently (bit-equal), served through the engine's
# loader (same logits as the dense model of the decoded weights), malformed inputs refused.
add_test(NAME hf_spqr_convert_test
         COMMAND ${SPQR_PYTHON} ${SPQR_ROOT}/tests/tools/hf_spqr_convert_test.py
                 --convert $<TARGET_FILE:spqr-convert>
                 --dump-logits $<TARGET_FILE:spqr-dump-logits> --source-dir ${SPQR_ROOT})
set_tests_properties(hf_spqr_convert_test PROPERTIES LABELS "python;cpu" TIMEOUT 120
                     ENVIRONMENT OMP_WAIT_POLICY=passive)
