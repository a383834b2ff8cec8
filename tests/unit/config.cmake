# Unit tests of config/ (key table, reference YAML file, YAML and flag loading).
find_package(yaml-cpp REQUIRED)
spqr_add_gtest(config_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/config_test.cc
               LIBS spqr_config yaml-cpp LABELS unit)
