# Chat templates (engine/chat): the C++ renders against the committed Jinja2 fixture, and the
# fixture against Jinja2 itself (skipped, exit 77, when Debian's python3-jinja2 is missing).
spqr_add_gtest(chat_template_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/chat_template_test.cc
               LIBS spqr_engine_chat LABELS unit)
add_test(NAME chat_template.reference
         COMMAND ${SPQR_PYTHON} ${SPQR_ROOT}/tests/tools/render_chat_templates.py check)
set_tests_properties(chat_template.reference PROPERTIES LABELS "python" TIMEOUT 60
                     SKIP_RETURN_CODE 77)
