// Test helper: one SpQR layer's tensors (SpqrLayerToTensors under the prefix "layer") held in
// memory with safetensors-like views onto them, so tests can load the layer back, damage a tensor
// or a spqr_meta slot, and check what the reader says.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/format/spqr_tensors.h"

namespace spqr {

struct SpqrTensorStore {
  std::vector<OwnedTensor> tensors;  // tensors[0] is "layer.spqr_meta"
  std::map<std::string, TensorView> views;

  explicit SpqrTensorStore(std::vector<OwnedTensor> t) : tensors(std::move(t)) { Rebuild(); }

  // Call after changing `tensors` (views point into their bytes).
  void Rebuild() {
    views.clear();
    for (const OwnedTensor& t : tensors) {
      views[t.name] = TensorView{t.name, t.dtype, t.shape, t.bytes.data(), t.bytes.size()};
    }
  }
  TensorLookup lookup() const {
    return [this](const std::string& name) -> const TensorView* {
      auto it = views.find(name);
      return it == views.end() ? nullptr : &it->second;
    };
  }
  // The tensor "layer.<suffix>" (a test failure and tensors[0] if there is none).
  OwnedTensor& get(const std::string& suffix) {
    for (OwnedTensor& t : tensors) {
      if (t.name == "layer." + suffix) return t;
    }
    ADD_FAILURE() << "no tensor " << suffix;
    return tensors[0];
  }
  void SetMeta(int slot, uint32_t value) {
    std::memcpy(get("spqr_meta").bytes.data() + 4 * slot, &value, 4);
    Rebuild();
  }
  uint32_t Meta(int slot) {
    uint32_t v;
    std::memcpy(&v, get("spqr_meta").bytes.data() + 4 * slot, 4);
    return v;
  }
};

}  // namespace spqr
