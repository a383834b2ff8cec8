# libFuzzer targets for the model directory's untrusted bytes beyond the safetensors container:
# the SpQR layer loader (spqr_format_fuzz) and config.json with its quantization_config
# (model_config_fuzz); see common.cmake. make_spqr_seeds writes the SpQR seed corpus, and a ctest
# checks that the committed seeds are still what it writes.
include(${CMAKE_CURRENT_LIST_DIR}/common.cmake)
if(SPQR_FUZZ)
  set(spqr_format_src ${SPQR_ROOT}/engine/format/bit_packing.cc
                      ${SPQR_ROOT}/engine/format/spqr_layer.cc
                      ${SPQR_ROOT}/engine/format/spqr_tensors.cc
                      ${SPQR_ROOT}/engine/format/spqr_model.cc
                      ${SPQR_ROOT}/engine/model/safetensors.cc
                      ${SPQR_ROOT}/engine/model/tensor.cc)
  foreach(name spqr_format model_config)
    add_executable(${name}_fuzz ${CMAKE_CURRENT_LIST_DIR}/${name}_fuzz.cc ${spqr_format_src})
    target_include_directories(${name}_fuzz PRIVATE ${SPQR_ROOT})
    target_compile_options(${name}_fuzz PRIVATE ${SPQR_FUZZ_FLAGS})
    target_link_options(${name}_fuzz PRIVATE ${SPQR_FUZZ_FLAGS})
    target_link_libraries(${name}_fuzz PRIVATE absl::status absl::statusor absl::strings
                                               nlohmann_json::nlohmann_json)
  endforeach()
  target_sources(model_config_fuzz PRIVATE ${SPQR_ROOT}/engine/model/model_config.cc)
  spqr_add_fuzz_test(spqr_format 5000 -max_len=8192
                     -dict=${CMAKE_CURRENT_LIST_DIR}/spqr_format.dict)
  spqr_add_fuzz_test(model_config 20000 -max_len=4096
                     -dict=${CMAKE_CURRENT_LIST_DIR}/model_config.dict)

  # The seed generator is an ordinary (uninstrumented) program.
  add_executable(make_spqr_seeds ${CMAKE_CURRENT_LIST_DIR}/make_spqr_seeds.cc
                                 ${SPQR_ROOT}/engine/format/bit_packing.cc
                                 ${SPQR_ROOT}/engine/format/spqr_layer.cc
                                 ${SPQR_ROOT}/engine/format/spqr_tensors.cc
                                 ${SPQR_ROOT}/engine/model/tensor.cc
                                 ${SPQR_ROOT}/quantizer/safetensors_writer.cc)
  target_include_directories(make_spqr_seeds PRIVATE ${SPQR_ROOT})
  target_link_libraries(make_spqr_seeds PRIVATE absl::status absl::statusor absl::strings
                                                nlohmann_json::nlohmann_json)
  add_dependencies(fuzz_targets make_spqr_seeds)
  set(seeds ${CMAKE_BINARY_DIR}/fuzz/spqr_format_seeds)
  # Every seed it writes must equal the committed one (the corpus also holds regression inputs).
  add_test(NAME spqr_format_fuzz.seeds_up_to_date
           COMMAND sh -c "rm -rf '${seeds}' && mkdir -p '${seeds}' && \
'$<TARGET_FILE:make_spqr_seeds>' '${seeds}' && for f in '${seeds}'/*; do \
cmp \"$f\" '${CMAKE_CURRENT_LIST_DIR}/corpus/spqr_format/'\"$(basename \"$f\")\" || exit 1; done")
  set_tests_properties(spqr_format_fuzz.seeds_up_to_date PROPERTIES LABELS fuzz TIMEOUT 60)
endif()
