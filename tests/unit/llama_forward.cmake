# The LLaMA layer loop written once over ForwardOps (engine/backend/forward/): its op sequence,
# buffers and logit rows against a recording fake, and ValidateStepPlan's errors.
spqr_add_gtest(llama_forward_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/llama_forward_test.cc
               LIBS spqr_engine_forward LABELS unit)
