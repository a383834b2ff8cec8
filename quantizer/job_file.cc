#include "quantizer/job_file.h"

#include <cstdlib>
#include <limits>

#include "absl/strings/str_cat.h"
#include "yaml-cpp/yaml.h"

namespace spqr {

absl::Status ParseMethod(const std::string& name, SpqrLayerConfig::Method* method) {
  if (name == "spqr") {
    *method = SpqrLayerConfig::Method::kSpqr;
  } else if (name == "gptq") {
    *method = SpqrLayerConfig::Method::kGptq;
  } else if (name == "rtn") {
    *method = SpqrLayerConfig::Method::kRtn;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("method must be spqr, gptq or rtn, got '", name, "'"));
  }
  return absl::OkStatus();
}

absl::Status ParseTau(const std::string& text, double* tau) {
  if (text == "inf" || text == "none" || text == ".inf") {
    *tau = std::numeric_limits<double>::infinity();
    return absl::OkStatus();
  }
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0') {
    return absl::InvalidArgumentError(
        absl::StrCat("tau must be a number or 'inf', got '", text, "'"));
  }
  *tau = v;
  return absl::OkStatus();
}

absl::Status ApplyJobYaml(const std::string& text, const std::string& source,
                          ModelQuantizeJob* job) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": YAML error: ", e.what()));
  }
  if (root.IsNull()) return absl::OkStatus();
  if (!root.IsMap()) return absl::InvalidArgumentError(absl::StrCat(source, ": not a mapping"));
  for (const auto& kv : root) {
    const std::string key = kv.first.as<std::string>();
    const YAML::Node& v = kv.second;
    try {
      if (key == "model") {
        job->model_dir = v.as<std::string>();
      } else if (key == "out") {
        job->output_dir = v.as<std::string>();
      } else if (key == "calibration") {
        job->calibration_text = v.as<std::string>();
      } else if (key == "force") {
        job->force = v.as<bool>();
      } else if (key == "nsamples") {
        job->nsamples = v.as<int>();
      } else if (key == "seqlen") {
        job->seqlen = v.as<int>();
      } else if (key == "seed") {
        job->seed = v.as<uint64_t>();
      } else if (key == "threads") {
        job->threads = v.as<int>();
      } else if (key == "method") {
        absl::Status st = ParseMethod(v.as<std::string>(), &job->layer.method);
        if (!st.ok()) return absl::InvalidArgumentError(absl::StrCat(source, ": ", st.message()));
      } else if (key == "wbits") {
        job->layer.wbits = v.as<int>();
      } else if (key == "beta1") {
        job->layer.beta1 = v.as<int>();
      } else if (key == "beta2") {
        job->layer.beta2 = v.as<int>();
      } else if (key == "stats_bits") {
        job->layer.stats_bits = v.as<int>();
      } else if (key == "tau") {
        absl::Status st = ParseTau(v.as<std::string>(), &job->layer.tau);
        if (!st.ok()) return absl::InvalidArgumentError(absl::StrCat(source, ": ", st.message()));
      } else if (key == "lambda") {
        job->layer.lambda = v.as<double>();
      } else if (key == "act_order") {
        job->layer.act_order = v.as<bool>();
      } else {
        return absl::InvalidArgumentError(absl::StrCat(source, ": unknown key '", key, "'"));
      }
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": key '", key, "' has a value of the wrong type"));
    }
  }
  return absl::OkStatus();
}

}  // namespace spqr
