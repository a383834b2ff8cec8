# Engine runtime: sampler, detokenizer, KV block allocator, scheduler and the engine loop.
foreach(name sampler detokenizer block_allocator scheduler engine prefix_cache engine_step_observer
             engine_nonfinite)
  spqr_add_gtest(${name}_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/${name}_test.cc
                 LIBS spqr_engine_runtime LABELS unit)
endforeach()

# The model's chat setup (engine/runtime/model_chat.h): template loading with the model,
# end-of-turn tokens, refusals, and the tokenization of rendered prompts.
spqr_add_gtest(model_chat_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/model_chat_test.cc
               LIBS spqr_engine_runtime nlohmann_json::nlohmann_json LABELS unit)
