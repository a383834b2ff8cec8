// SpQR's outlier-aware statistics fitting (leave-one-out).
#pragma once

#include <cstdint>

namespace spqr {

// For one row of a column group, values v[0..count) with inverse-Cholesky diagonals d[0..count):
// reduction[k] = E_all - E_without_k, where E_all is the sum over the group of
// ((qd(v_i) - v_i) / d_i)^2 with an SpQR-style min-max quantizer (bits wbits, unrounded zero)
// fitted on all values, and E_without_k the same sum over i != k with the quantizer re-fitted on
// the other count-1 values (the left-out weight would be kept exactly and costs nothing).
void LeaveOneOutErrorReduction(const float* v, const float* d, int count, int wbits,
                               double* reduction);

// Applies the candidate test reduction[k] > threshold and writes the values the statistics are
// fitted on: candidates replaced by the mean of the row's other (non-candidate) values (0 when all
// are candidates). When that would leave a constant row out of a non-constant one (the fit would
// then use the range [-1, 1]), only the weight with the largest reduction is treated as a
// candidate instead (a documented deviation from the reference, docs/model-format.md). Returns the
// number of candidates.
int CleanGroupRowForFitting(const float* v, const float* d, int count, int wbits, double threshold,
                            float* cleaned);

}  // namespace spqr
