# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Thresholds at a stated false-alarm rate and the order-keeping score map: the statistics, without any model."""

import math

import pytest
import torch
from scipy.stats import beta, norm

from anomalib_dcam.post_processing.false_alarm import FalseAlarmRule, false_alarm_threshold, rate_upper_bound
from anomalib_dcam.post_processing.score_map import normal_scale, threshold_centred_map


def test_enough_normals_give_the_kth_largest_score() -> None:
    scores = torch.randn(199, generator=torch.Generator().manual_seed(0))
    result = false_alarm_threshold(scores, 0.01)
    assert result.rule == FalseAlarmRule.ORDER_STATISTIC.value
    assert result.rank == 2  # floor(0.01 * 200)
    assert result.threshold == float(scores.sort(descending=True).values[1])
    assert int((scores > result.threshold).sum()) == 1  # the one normal above the 2nd largest
    assert result.expected_rate == pytest.approx(2 / 200)
    assert result.upper_bound == pytest.approx(beta.ppf(0.95, 2, 198))
    # 99 normals resolve 1 %: the largest, expected rate exactly 1 %.
    at_limit = false_alarm_threshold(scores[:99], 0.01)
    assert (at_limit.rule, at_limit.rank, at_limit.expected_rate) == ("order_statistic", 1, pytest.approx(0.01))
    assert at_limit.threshold == float(scores[:99].max())


def test_the_expected_false_alarm_rate_is_the_budget() -> None:
    """Over many held-out sets of 199 normals from a known distribution, the mean true rate is k / (n + 1) = 1 %."""
    generator = torch.Generator().manual_seed(1)
    rates = []
    for _ in range(2000):
        threshold = false_alarm_threshold(torch.randn(199, generator=generator), 0.01).threshold
        rates.append(norm.sf(threshold))  # the true false-alarm rate of this threshold on new normals
    mean = sum(rates) / len(rates)
    # The rate is Beta(2, 198): mean 0.01, standard deviation 0.0070, so the mean of 2000 has a standard error 1.6e-4.
    assert mean == pytest.approx(0.01, abs=6e-4)
    inside = sum(rate <= beta.ppf(0.95, 2, 198) for rate in rates) / len(rates)
    assert inside == pytest.approx(0.95, abs=0.02)  # the stated 95 % upper bound covers 95 % of the thresholds


def test_few_normals_extrapolate_an_exponential_tail() -> None:
    """40 normals cannot resolve 1 %: the tail fit meets the budget on average when the tail is exponential."""
    torch.manual_seed(2)
    exponential = torch.distributions.Exponential(torch.tensor(1.0))
    rates = []
    for _ in range(2000):
        scores = exponential.sample((40,))
        result = false_alarm_threshold(scores, 0.01)
        assert result.rule == FalseAlarmRule.TAIL_FIT.value
        assert result.threshold >= float(scores.max())
        rates.append(math.exp(-result.threshold))
    assert sum(rates) / len(rates) == pytest.approx(0.01, abs=0.0015)
    assert result.expected_rate == 0.01
    # Distribution-free, a threshold at or above the largest of 40 normals: rate <= 1 - 0.05 ** (1 / 40) (7.2 %).
    assert result.upper_bound == pytest.approx(1 - 0.05 ** (1 / 40))
    assert rate_upper_bound(1, 40) == pytest.approx(0.0722, abs=1e-4)


def test_degenerate_sets_fall_back_to_the_largest_value() -> None:
    assert false_alarm_threshold(torch.tensor([]), 0.01) is None
    two = false_alarm_threshold(torch.tensor([0.3, 0.1, float("nan")]), 0.01)  # NaN ignored
    assert (two.rule, two.threshold, two.count, two.expected_rate) == ("largest", pytest.approx(0.3), 2, 1 / 3)
    flat = false_alarm_threshold(torch.full((10,), 0.5), 0.01)  # no spread to extrapolate
    assert (flat.rule, flat.threshold) == ("largest", 0.5)
    with pytest.raises(ValueError, match=r"rate=0 is not accepted; it must be a number in \(0, 1\)"):
        false_alarm_threshold(torch.ones(3), 0)


def test_the_score_map_is_strictly_increasing_with_the_threshold_at_one_half() -> None:
    threshold, scale = torch.tensor(0.2), torch.tensor(0.05)
    assert threshold_centred_map(threshold, threshold, scale) == 0.5
    assert threshold_centred_map(threshold - scale, threshold, scale) == pytest.approx(0.25)
    assert threshold_centred_map(threshold + scale, threshold, scale) == pytest.approx(0.75)
    # Distinct raw scores up to 50 scales either side of the threshold stay distinct and in order (no clipping),
    # steps of 1/2000 of a scale included.
    raw = (threshold + scale * torch.linspace(-50.0, 50.0, 200_001)).unique()
    mapped = threshold_centred_map(raw, threshold, scale)
    assert (mapped.diff() > 0).all()
    # Far beyond, float32 cannot hold every distinction in (0, 1) (its spacing near 1 is 6e-8), but the map never
    # inverts two scores, and it stays inside (0, 1) up to millions of scales from the threshold.
    extreme = torch.linspace(-1e4, 1e4, 200_001)  # 200,000 scales either side
    mapped = threshold_centred_map(extreme, threshold, scale)
    assert (mapped.diff() >= 0).all()
    assert (mapped > 0).all()
    assert (mapped < 1).all()
    assert (threshold_centred_map(torch.tensor([-1e30, 1e30]), threshold, scale).diff() > 0).all()
    # Uncalibrated (NaN) or zero scales pass the raw values through, as anomalib does without statistics.
    assert torch.equal(threshold_centred_map(raw, torch.tensor(float("nan")), scale), raw)
    assert torch.equal(threshold_centred_map(raw, threshold, torch.tensor(0.0)), raw)


def test_the_scale_is_the_distance_from_the_typical_normal_to_the_threshold() -> None:
    assert normal_scale(0.3, 0.2, 1.0) == pytest.approx(0.1)
    assert normal_scale(0.1, 0.2, 1.0) == pytest.approx(0.5)  # a threshold below the median: half the range
    assert math.isnan(normal_scale(0.1, None, None))
