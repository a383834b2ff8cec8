// Status propagation macros. Debian's Abseil (20220623) has no absl/status/status_macros.h,
// so the project defines the two it needs once, here.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SPQR_CONCAT_INNER(a, b) a##b
#define SPQR_CONCAT(a, b) SPQR_CONCAT_INNER(a, b)

// Returns from the current function with the status if `expr` is not OK.
#define RETURN_IF_ERROR(expr)                            \
  do {                                                   \
    ::absl::Status spqr_status_tmp_ = (expr);            \
    if (!spqr_status_tmp_.ok()) return spqr_status_tmp_; \
  } while (0)

// ASSIGN_OR_RETURN(auto x, MakeX()); declares/assigns `x` or returns the error status.
#define ASSIGN_OR_RETURN(lhs, expr) \
  SPQR_ASSIGN_OR_RETURN_IMPL(SPQR_CONCAT(spqr_statusor_, __LINE__), lhs, expr)
#define SPQR_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()
