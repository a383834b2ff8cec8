"""Statistics of the zero-shot check (bench/zeroshot/run_zeroshot.py): multiple-choice decisions,
accuracy with a Wilson score interval, and the paired comparison of two configurations on the
same items (exact McNemar test and a paired bootstrap interval of the accuracy difference).

Pure Python plus numpy (only for the bootstrap), so the ctest can import it with Debian's python3.
"""

import math

import numpy as np

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def choose(sum_logprobs, lengths=None):
    """Index of the best choice: argmax of sum_logprobs, or of sum_logprob / length when lengths
    (lm-eval's acc_norm: the continuation's length in characters) are given. Ties go to the lowest
    index, as numpy.argmax does in lm-eval, so a tie with the gold answer at a later index counts
    as wrong."""
    if lengths is None:
        scores = list(sum_logprobs)
    else:
        scores = [s / n for s, n in zip(sum_logprobs, lengths)]
    best = 0
    for k in range(1, len(scores)):
        if scores[k] > scores[best]:
            best = k
    return best


def wilson(correct, n, z=Z95):
    """Wilson score interval (lower, upper) for a binomial proportion correct / n."""
    if n <= 0:
        raise ValueError("wilson: n must be positive")
    if not 0 <= correct <= n:
        raise ValueError(f"wilson: correct = {correct} is outside [0, {n}]")
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b, c):
    """Two-sided exact McNemar p-value for b and c discordant pairs (a binomial test of b against
    Binomial(b + c, 1/2)); 1.0 when there are no discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def paired_bootstrap(correct_a, correct_b, resamples=10000, seed=0):
    """Percentile 95 % interval of mean(correct_b) - mean(correct_a), resampling ITEMS (both
    configurations' outcomes on an item stay together). Returns (low, high)."""
    a = np.asarray(correct_a, dtype=np.float64)
    b = np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError("paired_bootstrap: need two equally long, non-empty outcome lists")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(resamples, a.size))
    diffs = (b[idx] - a[idx]).mean(axis=1)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(low), float(high)


def compare(correct_a, correct_b, predicted_a, predicted_b, resamples=10000, seed=0):
    """Paired comparison of configuration b against a on the same items."""
    if len(correct_a) != len(correct_b):
        raise ValueError("compare: the two runs scored different numbers of items")
    only_a = sum(1 for x, y in zip(correct_a, correct_b) if x and not y)
    only_b = sum(1 for x, y in zip(correct_a, correct_b) if y and not x)
    n = len(correct_a)
    low, high = paired_bootstrap(correct_a, correct_b, resamples, seed)
    return {
        "n": n,
        "difference": (sum(correct_b) - sum(correct_a)) / n,
        "difference_ci95_bootstrap": [low, high],
        "bootstrap_resamples": resamples,
        "bootstrap_seed": seed,
        "only_baseline_correct": only_a,
        "only_other_correct": only_b,
        "mcnemar_exact_p": mcnemar_exact(only_a, only_b),
        "same_prediction": sum(1 for x, y in zip(predicted_a, predicted_b) if x == y) / n,
    }
