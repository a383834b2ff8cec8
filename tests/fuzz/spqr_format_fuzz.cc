// libFuzzer target for the SpQR layer loader: the input is a safetensors file, and every layer in
// it (every "<prefix>.spqr_meta", at most 4) goes through SpqrLayerFromTensors, which checks the
// per-layer counts, shapes and CRC-32 and then ValidateSpqrLayer. Every input must end in an error
// status or in a layer that
//   - validates again and writes back (SpqrLayerToTensors) to exactly the bytes it was read from
//     (spqr_meta included: the reader checks every slot, the reserved ones must be 0),
//   - agrees with a quantization_config built from its own parameters,
//   - decodes (DequantizeSpqrLayer, layers up to 2^16 weights) with the per-row statistics of the
//     kernels' path (DecodeRowStats) bit-identical to the per-group reference (DecodeGroupStats).
//
// The CRC-32 would stop almost every mutation of the payload at the checksum, so a stored CRC of 0
// means "recompute" here: the target patches in the CRC of the payload as found, and mutations
// reach the structural checks behind it. Any other stored value is checked as it is, so the
// mismatch path is fuzzed as well. (The quantizer never writes 0 on purpose; a real CRC of 0 is
// just another valid input.)
//
// Build (clang only): configure with -DSPQR_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++, then build the
// target spqr_format_fuzz. Run it with -dict=tests/fuzz/spqr_format.dict, a scratch corpus
// directory first and tests/fuzz/corpus/spqr_format as seeds (make_spqr_seeds writes them).
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "engine/format/spqr_layer.h"
#include "engine/format/spqr_model.h"
#include "engine/format/spqr_tensors.h"
#include "engine/model/safetensors.h"

namespace {

constexpr int kMaxLayers = 4;
constexpr int64_t kMaxDecodedWeights = int64_t{1} << 16;

// Payload tensor suffixes in CRC order (spqr_tensors.h) for the statistics kind of `stats_bits`.
std::vector<std::string> PayloadSuffixes(uint32_t stats_bits) {
  std::vector<std::string> s = {"spqr_weight_codes"};
  if (stats_bits == spqr::kFp16Stats) {
    s.insert(s.end(), {"spqr_scale", "spqr_zero"});
  } else {
    s.insert(s.end(), {"spqr_scale_codes", "spqr_zero_codes", "spqr_second_level"});
  }
  s.insert(s.end(),
           {"spqr_outlier_row_offsets", "spqr_outlier_cols", "spqr_outlier_values", "spqr_perm"});
  return s;
}

// Lookup over `file` in which <prefix>.spqr_meta with a stored CRC of 0 gets the payload's CRC.
class PatchingLookup {
 public:
  PatchingLookup(const spqr::SafetensorsFile& file, const std::string& prefix)
      : file_(file), meta_name_(prefix + ".spqr_meta") {
    const spqr::TensorView* meta = file.Find(meta_name_);
    if (meta == nullptr || meta->dtype != spqr::DType::kU32 ||
        meta->nbytes != spqr::kMetaSlots * sizeof(uint32_t)) {
      return;
    }
    std::memcpy(meta_words_, meta->data, sizeof(meta_words_));
    if (meta_words_[spqr::kMetaCrc32] != 0) return;
    uint32_t crc = 0;
    for (const std::string& suffix : PayloadSuffixes(meta_words_[spqr::kMetaStatsBits])) {
      const spqr::TensorView* t = file.Find(prefix + "." + suffix);
      if (t != nullptr) crc = spqr::Crc32(t->data, t->nbytes, crc);
    }
    // A nonzero decode arithmetic is covered by the CRC too (spqr_tensors.h, little-endian).
    const uint32_t variant = meta_words_[spqr::kMetaDecodeArithmetic];
    if (variant != 0) crc = spqr::Crc32(&variant, sizeof(variant), crc);
    meta_words_[spqr::kMetaCrc32] = crc;
    patched_meta_ = *meta;
    patched_meta_.data = meta_words_;
    patched_ = true;
  }

  const spqr::TensorView* operator()(const std::string& name) const {
    if (patched_ && name == meta_name_) return &patched_meta_;
    return file_.Find(name);
  }

 private:
  const spqr::SafetensorsFile& file_;
  const std::string meta_name_;
  uint32_t meta_words_[spqr::kMetaSlots] = {};
  spqr::TensorView patched_meta_;
  bool patched_ = false;
};

void CheckWritesBack(const spqr::PackedSpqrLayer& layer, const std::string& prefix,
                     const spqr::TensorLookup& lookup) {
  for (const spqr::OwnedTensor& t : spqr::SpqrLayerToTensors(layer, prefix)) {
    const spqr::TensorView* in = lookup(t.name);
    if (in == nullptr || in->dtype != t.dtype || in->shape != t.shape ||
        in->nbytes != t.bytes.size()) {
      std::abort();
    }
    if (!t.bytes.empty() && std::memcmp(in->data, t.bytes.data(), t.bytes.size()) != 0) {
      std::abort();
    }
  }
}

void CheckDecode(const spqr::PackedSpqrLayer& layer) {
  if (layer.out_features * layer.in_features > kMaxDecodedWeights) return;
  if (!spqr::DequantizeSpqrLayer(layer).ok()) std::abort();
  const int64_t groups = layer.num_groups();
  std::vector<float> second(static_cast<size_t>(groups * 4));
  std::vector<float> scale(static_cast<size_t>(groups)), zero(static_cast<size_t>(groups));
  for (int64_t r = 0; r < layer.out_features; ++r) {
    if (layer.stats_bits != spqr::kFp16Stats && r % layer.beta2 == 0) {
      spqr::ConvertBlockSecondLevel(layer, r / layer.beta2, second.data());
    }
    spqr::DecodeRowStats(layer, r, second.data(), scale.data(), zero.data());
    for (int64_t g = 0; g < groups; ++g) {
      const spqr::GroupStats ref = spqr::DecodeGroupStats(layer, r, g);
      if (std::memcmp(&ref.scale, &scale[g], sizeof(float)) != 0 ||
          std::memcmp(&ref.zero, &zero[g], sizeof(float)) != 0) {
        std::abort();
      }
    }
  }
}

void CheckMatchesOwnConfig(const spqr::PackedSpqrLayer& layer, const std::string& prefix) {
  spqr::SpqrQuantizationInfo info;
  info.method = "spqr";
  info.format_version = spqr::kSpqrFormatVersion;
  info.wbits = layer.wbits;
  info.beta1 = layer.beta1;
  info.beta2 = layer.beta2;
  info.stats_bits = layer.stats_bits;
  info.tau = 0.2;
  if (!spqr::CheckLayerMatchesQuantizationConfig(info, layer, prefix).ok()) std::abort();
  spqr::SpqrLayerTotals totals;
  totals.Add(layer);
  info.outlier_share = static_cast<double>(totals.outliers) / totals.parameters;
  info.avg_bits_real = spqr::SpqrRealBitsPerParameter(layer);
  info.avg_bits_formula = spqr::SpqrFormulaBitsPerParameter(layer);
  info.has_outlier_share = info.has_avg_bits_real = info.has_avg_bits_formula = true;
  if (!spqr::CheckTotalsMatchQuantizationConfig(info, totals).ok()) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // An in-memory file: Open() takes a path, and a disk file would make each run an I/O.
  static const int fd = memfd_create("spqr_format_fuzz", 0);
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  // SPQR_FUZZ_VERBOSE=1: print each layer's load status (e.g. to see that the seeds load).
  static const bool verbose = std::getenv("SPQR_FUZZ_VERBOSE") != nullptr;
  if (fd < 0 || ftruncate(fd, 0) != 0) std::abort();
  if (size > 0 && pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) std::abort();

  auto file = spqr::SafetensorsFile::Open(path);
  if (!file.ok()) return 0;
  int layers = 0;
  for (const std::string& name : (*file)->Names()) {
    if (!absl::EndsWith(name, ".spqr_meta") || ++layers > kMaxLayers) continue;
    const std::string prefix = name.substr(0, name.size() - std::strlen(".spqr_meta"));
    const PatchingLookup patching(**file, prefix);
    const spqr::TensorLookup lookup = [&patching](const std::string& n) { return patching(n); };
    if (!spqr::HasSpqrLayer(lookup, prefix)) std::abort();
    auto layer = spqr::SpqrLayerFromTensors(lookup, prefix);
    if (verbose)
      std::fprintf(stderr, "%s: %s\n", prefix.c_str(), layer.status().ToString().c_str());
    if (!layer.ok()) continue;
    if (!spqr::ValidateSpqrLayer(*layer, prefix).ok()) std::abort();
    CheckWritesBack(*layer, prefix, lookup);
    CheckMatchesOwnConfig(*layer, prefix);
    CheckDecode(*layer);
  }
  return 0;
}
