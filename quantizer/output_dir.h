// Where spqr-quantize may write, so that it never destroys its input or anything it did not write.
//
// Every output directory carries a marker file (kOutputMarker, a short JSON naming the writer and
// the source model). An existing --out is only ever replaced (--force) when it carries that
// marker, or is an empty directory; never when it is, holds or lies inside the input model
// directory, or holds the calibration text. Paths are compared canonically (symlinks resolved).
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace spqr {

// The marker file an spqr-quantize output directory holds.
inline constexpr char kOutputMarker[] = ".spqr-quantize-output";

// The marker's content: {"written_by": "spqr-quantize", "quantizer_version": ..., "source": ...}.
std::string OutputMarkerJson(const std::string& quantizer_version, const std::string& model_dir);

// True when `dir` is a directory (not a symlink) holding a regular-file marker whose JSON says
// it was written by spqr-quantize.
bool IsQuantizerOutput(const std::string& dir);

// Checks, before any work, that `output_dir` may be created (or, with `force`, replaced):
//  - it must not be the model directory, lie inside it, or contain it (INVALID_ARGUMENT);
//  - when it exists, it must not contain the calibration text (INVALID_ARGUMENT);
//  - an existing empty directory is fine; an existing marked one needs `force` (ALREADY_EXISTS
//    without); anything else that exists (a file, a symlink, a directory spqr-quantize did not
//    write) is refused (ALREADY_EXISTS / FAILED_PRECONDITION), naming why, and never suggests
//    --force for it.
absl::Status CheckOutputDirectory(const std::string& model_dir, const std::string& output_dir,
                                  const std::string& calibration_text, bool force);

// Creates a new, private temporary directory next to `output_dir` ("<output_dir>.tmp-XXXXXX",
// mkdtemp: never an existing path) and returns its path.
absl::StatusOr<std::string> CreateTemporaryOutput(const std::string& output_dir);

// Moves the finished `tmp` to `output_dir`. An existing `output_dir` is checked again (it may
// have changed during the run) and removed only when it is still a marked output (`force`) or an
// empty directory.
absl::Status PublishOutput(const std::string& tmp, const std::string& output_dir, bool force);

}  // namespace spqr
