# The committed random-weight test model (tests/data/test-model/) and its generator
# (tools/make_test_model.py): byte-identical regeneration, and the flag variants checked with an
# independent safetensors reader plus a numpy reference forward pass.
add_test(NAME test_model.reproducible
         COMMAND ${SPQR_PYTHON} ${SPQR_ROOT}/tests/unit/check_test_model.py reproducible
                 --repo ${SPQR_ROOT})
add_test(NAME test_model.variants
         COMMAND ${SPQR_PYTHON} ${SPQR_ROOT}/tests/unit/check_test_model.py variants
                 --repo ${SPQR_ROOT})
set_tests_properties(test_model.reproducible test_model.variants
                     PROPERTIES LABELS "python" TIMEOUT 120)
# tools/train/: the PyTorch LLaMA against the numpy reference, a tiny train/resume/export run.
add_test(NAME train_pipeline.tiny_run
         COMMAND ${SPQR_PYTHON} ${SPQR_ROOT}/tests/unit/check_train_pipeline.py)
set_tests_properties(train_pipeline.tiny_run PROPERTIES LABELS "python" TIMEOUT 180
                     SKIP_RETURN_CODE 77)
