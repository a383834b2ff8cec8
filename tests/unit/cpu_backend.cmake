# CPU backend: each op against a naive reference, and the backend's forward-step contract.
spqr_add_gtest(cpu_ops_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/cpu_ops_test.cc
               LIBS spqr_engine_cpu LABELS unit cpu)
spqr_add_gtest(cpu_backend_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/cpu_backend_test.cc
               LIBS spqr_engine_cpu LABELS unit cpu)
