"""Bootstrap intervals against cases small enough to compute by hand.

Why: every number in the CARE report leans on these functions; a wrong interval would make noise look
like a result (or hide one).
"""

from __future__ import annotations

import numpy as np
import pytest

from carelab.stats import (
    Estimate,
    bootstrap_ci,
    format_ci,
    mean_of_means_ci,
    paired_difference_ci,
    ratio_ci,
    unpaired_difference_ci,
)


def test_constant_values_give_a_zero_width_interval():
    assert bootstrap_ci([42.5] * 7) == Estimate(42.5, 42.5, 42.5, 7)
    assert bootstrap_ci([0.1] * 3).as_tuple() == (0.1, 0.1, 0.1, 3)  # float noise snapped to the point


def test_two_items_hand_computed():
    # Resample means of (0, 100): 0 w.p. 1/4, 50 w.p. 1/2, 100 w.p. 1/4 -> the 2.5 % / 97.5 % points are 0 / 100.
    est = bootstrap_ci([0.0, 100.0])
    assert est.as_tuple() == (50.0, 0.0, 100.0, 2)
    # At 40 % confidence the 30 % / 70 % quantiles both fall inside the middle atom (cumulative 1/4 .. 3/4).
    assert bootstrap_ci([0.0, 100.0], confidence=0.4).as_tuple() == (50.0, 50.0, 50.0, 2)


def test_empty_and_single_item():
    assert bootstrap_ci([]) == Estimate(None, None, None, 0)
    assert bootstrap_ci([3.0]) == Estimate(3.0, 3.0, 3.0, 1)


def test_interval_contains_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = bootstrap_ci(rng.random(20))
    large = bootstrap_ci(rng.random(2000))
    assert small.lo < small.mean < small.hi and large.lo < large.mean < large.hi
    assert (large.hi - large.lo) < (small.hi - small.lo) / 4  # ~ 1/sqrt(n): 10x narrower


def test_deterministic_under_the_seed():
    values = np.random.default_rng(2).random(30)
    assert bootstrap_ci(values) == bootstrap_ci(values)
    assert bootstrap_ci(values, seed=5) == bootstrap_ci(list(values), seed=5)
    assert bootstrap_ci(values, seed=5) != bootstrap_ci(values, seed=6)


def test_paired_difference_all_equal_is_that_point():
    a = [10.0, 55.0, 90.0, 20.0]
    b = [x - 7.5 for x in a]
    assert paired_difference_ci(a, b).as_tuple() == (7.5, 7.5, 7.5, 4)
    with pytest.raises(ValueError):
        paired_difference_ci([1.0], [1.0, 2.0])


def test_paired_interval_is_narrower_than_unpaired_on_correlated_data():
    rng = np.random.default_rng(3)
    difficulty = rng.random(40) * 100           # items differ a lot ...
    a = difficulty + rng.normal(3, 2, 40)       # ... and method a is ~3 points better on each
    paired = paired_difference_ci(a, difficulty)
    unpaired = unpaired_difference_ci(a, difficulty)
    assert paired.mean == pytest.approx(unpaired.mean)
    assert (paired.hi - paired.lo) < (unpaired.hi - unpaired.lo) / 5
    assert paired.lo > 0 > unpaired.lo  # only the paired comparison can tell the methods apart


def test_ratio_of_sums_resamples_items():
    # Quotes: item 1 has 2 exact of 2, item 2 has 0 of 2, item 3 has no quotes -> 2/4 = 50 %.
    est = ratio_ci([2, 0, 0], [2, 2, 0])
    assert est.mean == 0.5 and est.n == 3 and 0.0 <= est.lo < 0.5 < est.hi <= 1.0
    assert ratio_ci([0, 0], [0, 0]) == Estimate(None, None, None, 2)


def test_mean_of_means_weighs_groups_equally():
    # Group means 100 and 0 (sizes 1 and 4): the average is 50 whatever the sizes; constant groups -> a point.
    assert mean_of_means_ci([[100.0], [0.0] * 4]).as_tuple() == (50.0, 50.0, 50.0, 5)
    est = mean_of_means_ci([[0.0, 100.0], [], [0.0]])  # empty groups are skipped
    assert est.as_tuple() == (25.0, 0.0, 50.0, 3)


def test_format():
    assert format_ci(42.91, 31.24, 54.0) == "42.9 [31.2, 54.0]"
    assert format_ci(-3.14, -8.0, 1.5, signed=True) == "-3.1 [-8.0, 1.5]"
    assert format_ci(7.0) == "7.0"


def test_paired_ratio_difference_hand_cases():
    from carelab.stats import paired_ratio_difference_ci

    # a quotes exactly everywhere, b never: every resample gives 1 − 0
    assert paired_ratio_difference_ci([2, 1, 3], [2, 1, 3], [0, 0, 0], [1, 2, 1]).as_tuple() == (1.0, 1.0, 1.0, 3)
    # the same method against itself: joint resampling makes the difference exactly 0 (an unpaired one would not)
    num, den = [1, 0, 2, 1], [1, 2, 2, 3]
    assert paired_ratio_difference_ci(num, den, num, den).as_tuple() == (0.0, 0.0, 0.0, 4)
    # pooled shares, not means of per-item shares: (1+3)/(1+4) − (0+2)/(2+2) = 0.8 − 0.5
    est = paired_ratio_difference_ci([1, 3], [1, 4], [0, 2], [2, 2])
    assert est.mean == pytest.approx(0.3) and est.lo <= 0.3 <= est.hi
    assert paired_ratio_difference_ci([0], [0], [1], [1]).mean is None
    with pytest.raises(ValueError, match="same items"):
        paired_ratio_difference_ci([1], [1], [1, 1], [1, 1])


def test_the_eval_speed_ratio_interval_in_care_eval_md():
    # docs/care-eval.md: the mean of the five 1-thread old-vs-new ratios and its interval, from this function.
    from carelab.stats import bootstrap_ci

    mean, lo, hi, n = bootstrap_ci([2.03, 1.91, 1.71, 1.59, 1.48]).as_tuple()
    assert (round(mean, 2), round(lo, 2), round(hi, 2), n) == (1.74, 1.57, 1.92, 5)
