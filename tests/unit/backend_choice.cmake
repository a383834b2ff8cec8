# --backend cuda / auto in the real build (no harness): clear refusal without a GPU, auto's note.
spqr_add_gtest(backend_choice_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/backend_choice_test.cc
               LIBS spqr_engine_runtime LABELS unit)
