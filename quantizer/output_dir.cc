#include "quantizer/output_dir.h"

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace spqr {
namespace fs = std::filesystem;
namespace {

// The absolute path with every existing component's symlinks resolved (the rest kept as given).
fs::path Resolved(const std::string& path) {
  std::error_code ec;
  fs::path p = fs::weakly_canonical(fs::absolute(path, ec), ec);
  if (ec) p = fs::absolute(path).lexically_normal();
  // "a/b/" and "a/b" name the same directory; drop the empty last component.
  if (!p.has_filename() && p.has_parent_path() && p != p.root_path()) p = p.parent_path();
  return p;
}

// Whether `inner` is `outer` or lies below it (component-wise, both resolved).
bool IsWithin(const fs::path& inner, const fs::path& outer) {
  auto i = inner.begin();
  for (auto o = outer.begin(); o != outer.end(); ++o, ++i) {
    if (i == inner.end() || *i != *o) return false;
  }
  return true;
}

bool IsEmptyDirectory(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(fs::symlink_status(p, ec)) && fs::is_empty(p, ec) && !ec;
}

}  // namespace

std::string OutputMarkerJson(const std::string& quantizer_version, const std::string& model_dir) {
  return nlohmann::ordered_json({{"written_by", "spqr-quantize"},
                                 {"quantizer_version", quantizer_version},
                                 {"source", Resolved(model_dir).string()}})
             .dump(2) +
         "\n";
}

bool IsQuantizerOutput(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(fs::symlink_status(dir, ec))) return false;
  const fs::path marker = fs::path(dir) / kOutputMarker;
  if (!fs::is_regular_file(fs::symlink_status(marker, ec))) return false;
  std::ifstream in(marker, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, false);
  return !j.is_discarded() && j.is_object() && j.value("written_by", "") == "spqr-quantize";
}

absl::Status CheckOutputDirectory(const std::string& model_dir, const std::string& output_dir,
                                  const std::string& calibration_text, bool force) {
  if (output_dir.empty()) return absl::InvalidArgumentError("no output directory given");
  const fs::path model = Resolved(model_dir), out = Resolved(output_dir);
  if (out == model) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--out '", output_dir, "' is the input model directory '", model_dir,
        "' (resolved: ", model.string(), "); the quantizer never writes over its input"));
  }
  if (IsWithin(out, model)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--out '", output_dir, "' lies inside the input model directory '", model_dir,
                     "' (resolved: ", out.string(), "); choose a directory outside the model"));
  }
  if (IsWithin(model, out)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--out '", output_dir, "' contains the input model directory '", model_dir,
                     "' (resolved: ", model.string(), "); replacing it would delete the model"));
  }
  std::error_code ec;
  const fs::file_status status = fs::symlink_status(output_dir, ec);
  if (!fs::exists(status)) return absl::OkStatus();
  if (!calibration_text.empty() && IsWithin(Resolved(calibration_text), out)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--out '", output_dir, "' contains the calibration text '", calibration_text,
                     "'; choose a directory that holds none of the inputs"));
  }
  if (IsEmptyDirectory(output_dir)) return absl::OkStatus();
  if (IsQuantizerOutput(output_dir)) {
    if (force) return absl::OkStatus();
    return absl::AlreadyExistsError(
        absl::StrCat("output '", output_dir,
                     "' exists and holds an earlier spqr-quantize output; choose "
                     "another --out, or pass --force to replace that output"));
  }
  const char* what = fs::is_symlink(status)     ? "is a symbolic link"
                     : fs::is_directory(status) ? "is a directory spqr-quantize did not write"
                                                : "is a file";
  return absl::Status(
      force ? absl::StatusCode::kFailedPrecondition : absl::StatusCode::kAlreadyExists,
      absl::StrCat("output '", output_dir, "' exists and ", what, " (no ", kOutputMarker,
                   " marker); ",
                   force ? "--force only replaces earlier spqr-quantize outputs, " : "",
                   "it is left untouched: choose a new --out directory"));
}

absl::StatusOr<std::string> CreateTemporaryOutput(const std::string& output_dir) {
  fs::path out(output_dir);
  if (!out.has_filename()) out = out.parent_path();
  std::error_code ec;
  if (out.has_parent_path()) fs::create_directories(out.parent_path(), ec);
  std::string pattern = out.string() + ".tmp-XXXXXX";
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create a temporary directory '", pattern,
                     "': ", std::error_code(errno, std::generic_category()).message()));
  }
  return std::string(buf.data());
}

absl::Status PublishOutput(const std::string& tmp, const std::string& output_dir, bool force) {
  std::error_code ec;
  if (fs::exists(fs::symlink_status(output_dir, ec))) {
    if (IsQuantizerOutput(output_dir) && force) {
      fs::remove_all(output_dir, ec);
    } else if (IsEmptyDirectory(output_dir)) {
      fs::remove(output_dir, ec);  // rmdir: fails rather than delete anything that appeared
    } else {
      return absl::FailedPreconditionError(
          absl::StrCat("output '", output_dir, "' changed during the run and is no longer ",
                       force ? "an spqr-quantize output" : "empty",
                       "; it is left untouched and the result stays in '", tmp, "'"));
    }
    if (ec) {
      return absl::DataLossError(
          absl::StrCat("cannot remove the old output '", output_dir, "': ", ec.message()));
    }
  }
  fs::rename(tmp, output_dir, ec);
  if (ec) {
    return absl::DataLossError(
        absl::StrCat("cannot rename '", tmp, "' to '", output_dir, "': ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace spqr
