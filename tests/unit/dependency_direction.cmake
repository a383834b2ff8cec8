add_test(NAME dependency_direction
         COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/dependency_direction.sh ${SPQR_ROOT})
set_tests_properties(dependency_direction PROPERTIES LABELS "lint")
