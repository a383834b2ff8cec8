# Shared set-up of the libFuzzer targets (safetensors.cmake, server_inputs.cmake,
# spqr_format.cmake). Off by default: they need clang (cmake -DSPQR_FUZZ=ON
# -DCMAKE_CXX_COMPILER=clang++). The code under test is compiled into each target so it gets the
# fuzzer's coverage instrumentation.
include_guard(GLOBAL)
set(SPQR_FUZZ_DIR ${CMAKE_CURRENT_LIST_DIR})
option(SPQR_FUZZ "Build the libFuzzer targets (requires clang)" OFF)
set(SPQR_FUZZ_SECONDS 0 CACHE STRING
    "When > 0, each fuzz ctest runs for this many seconds (CI) instead of its fixed-seed smoke run")
if(SPQR_FUZZ AND NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  message(FATAL_ERROR "SPQR_FUZZ=ON needs clang (-DCMAKE_CXX_COMPILER=clang++), not ${CMAKE_CXX_COMPILER_ID}")
endif()
# `fuzz_targets` builds every fuzz target (tools/fuzz.sh builds only that).
if(SPQR_FUZZ)
  add_custom_target(fuzz_targets)
endif()
# Undefined behaviour must stop the run like a memory error does; by default UBSan only reports
# and libFuzzer would go on as if the input were fine.
set(SPQR_FUZZ_FLAGS -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -g)

# spqr_add_fuzz_test(<name> <runs> [fuzzer args...]): ctest <name>_fuzz.smoke (label fuzz) runs
# <name>_fuzz from the seeds in corpus/<name>, writing new inputs to a corpus directory in the build
# tree (the first directory gets them) and any crash input to build/fuzz/. Fixed seed and <runs>
# inputs by default; SPQR_FUZZ_SECONDS > 0 makes it a timed run instead.
function(spqr_add_fuzz_test name runs)
  set(work ${CMAKE_BINARY_DIR}/fuzz/${name}_corpus)
  file(MAKE_DIRECTORY ${work})
  if(SPQR_FUZZ_SECONDS GREATER 0)
    set(budget -max_total_time=${SPQR_FUZZ_SECONDS})
    math(EXPR timeout "${SPQR_FUZZ_SECONDS} + 60")
  else()
    set(budget -runs=${runs} -max_total_time=90)
    set(timeout 120)
  endif()
  # -timeout: one input taking longer than this is a hang (libFuzzer's default is 20 minutes).
  add_test(NAME ${name}_fuzz.smoke
           COMMAND ${name}_fuzz ${budget} -seed=1 -timeout=20 -artifact_prefix=${CMAKE_BINARY_DIR}/fuzz/
                   ${ARGN} ${work} ${SPQR_FUZZ_DIR}/corpus/${name})
  set_tests_properties(${name}_fuzz.smoke PROPERTIES LABELS fuzz TIMEOUT ${timeout})
  add_dependencies(fuzz_targets ${name}_fuzz)
endfunction()
