# Deployment checks (label "deploy"): static checks of deploy/, the Dockerfile and the Prometheus
# rules, and two integration tests against the real spqr-server binary on 127.0.0.1 — a real
# Prometheus server scraping it, and the Python client (clients/python) talking to it.
# Tests that need promtool/prometheus skip (exit 77) with a message when those are missing.
set(deploy_script ${CMAKE_CURRENT_LIST_DIR}/deploy_static_checks.py)
foreach(check promtool-config promtool-rules promtool-test yaml k8s compose dashboard
              metric-names dockerfile)
  string(REPLACE "-" "_" check_name ${check})
  add_test(NAME deploy_${check_name}
           COMMAND ${SPQR_PYTHON} ${deploy_script} --root ${SPQR_ROOT} ${check})
  set_tests_properties(deploy_${check_name} PROPERTIES LABELS "deploy" TIMEOUT 120
                                                       SKIP_RETURN_CODE 77)
endforeach()

if(TARGET spqr-quantize)
  add_test(NAME deploy_quantize_job_flags
           COMMAND ${SPQR_PYTHON} ${deploy_script} --root ${SPQR_ROOT}
                   --binary $<TARGET_FILE:spqr-quantize> quantize-flags)
  set_tests_properties(deploy_quantize_job_flags PROPERTIES LABELS "deploy" TIMEOUT 120)
endif()

if(TARGET spqr-server AND TARGET spqr_proto_python)
  set(deploy_server_args
      --server $<TARGET_FILE:spqr-server> --model ${SPQR_ROOT}/tests/data/test-model
      --config ${SPQR_ROOT}/config/spqr-server.yaml --stubs ${SPQR_PYTHON_STUBS_DIR}
      --client-dir ${SPQR_ROOT}/clients/python)
  add_test(NAME deploy_prometheus_scrape
           COMMAND ${SPQR_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/deploy_prometheus_scrape_test.py
                   ${deploy_server_args} --alerts ${SPQR_ROOT}/deploy/prometheus/alerts.yml)
  add_test(NAME python_client_stream_and_score
           COMMAND ${SPQR_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/python_client_test.py
                   ${deploy_server_args})
  set_tests_properties(deploy_prometheus_scrape python_client_stream_and_score
                       PROPERTIES LABELS "deploy;integration" TIMEOUT 240 SKIP_RETURN_CODE 77
                                  ENVIRONMENT PYTHONDONTWRITEBYTECODE=1)
endif()
