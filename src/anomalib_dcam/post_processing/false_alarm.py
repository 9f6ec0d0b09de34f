# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

r"""Thresholds at a stated false-alarm rate, from held-out normal scores alone.

A production line states how often a good part may be rejected (the *false-alarm budget* :math:`\alpha`, e.g. 1 %)
and needs the threshold that meets it. Only normal images are needed, so the rule works where the validation set
has no (or only faint, synthetic) anomalies and an F1-optimal threshold falls to the lowest normal score.

**The rule.** Sort the :math:`n` held-out normal scores, largest first: :math:`s_1 \ge s_2 \ge \dots \ge s_n`. An
image is flagged when its score is *greater* than the threshold :math:`t`.

1. *Order statistic* (when :math:`k = \lfloor \alpha (n + 1) \rfloor \ge 1`): :math:`t = s_k`, the :math:`k`-th
   largest normal score. For continuous scores the false-alarm rate :math:`p` of this threshold on new normal images
   is distributed as :math:`\mathrm{Beta}(k, n + 1 - k)` whatever the score distribution, so its expectation is
   :math:`k / (n + 1) \le \alpha` (ties only lower it). This needs :math:`n \ge 1/\alpha - 1` normals: 99 for 1 %.
2. *Exponential tail fit* (fewer normals, :math:`k = 0`): no order statistic resolves :math:`\alpha`; even the
   largest normal has an expected rate of :math:`1/(n + 1)` (2.4 % for 40 normals). The scores above
   :math:`u = s_{m+1}` (the top :math:`m = \lceil n / 5 \rceil` of them, at least 2 and at most :math:`n - 1`) are
   taken as exponential excesses with mean :math:`\hat\beta`, exceeded with probability
   :math:`p_u = (m + 1)/(n + 1)`, and :math:`t = u + m \hat\beta \left((p_u/\alpha)^{1/m} - 1\right)`, the quantile of
   the predictive (Lomax) distribution of a new excess, which accounts for the uncertainty of :math:`\hat\beta` (the
   plain plug-in quantile :math:`u + \hat\beta \ln(p_u/\alpha)` would exceed the budget on average). It is never below
   :math:`s_1`. Its expected rate is :math:`\alpha` *if* the tail is exponential; the data cannot check that tail.
   Distribution-free, a threshold at or above :math:`s_1` has a rate of at most
   :math:`1 - 0.05^{1/n}` with 95 % confidence (7.2 % for 40 normals).
3. Fewer than 3 normals, or a flat tail (equal scores): :math:`t = s_1`, with its expected rate :math:`1/(n + 1)`.

:func:`false_alarm_threshold` returns the threshold with the rule used, the expected rate and the one-sided 95 %
upper confidence bound of the true rate (the 0.95 quantile of :math:`\mathrm{Beta}(k, n + 1 - k)`, with :math:`k = 1`
for rules 2 and 3). docs/multiclass.md has a table of these figures for typical numbers of normals.

The same rule serves pixel thresholds (pixels of normal images) and the unknown-product limit (distances of normal
images to their own product's prototype). Pixels of one image are strongly correlated (the anomaly map is smooth), so
for pixels the expected rate still holds but the confidence bound computed from the pixel count is far too narrow:
the effective sample is closer to the number of images than to the number of pixels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

import torch

__all__ = [
    "CONFIDENCE_LEVEL",
    "FalseAlarmRule",
    "FalseAlarmThreshold",
    "check_rate",
    "false_alarm_threshold",
    "rate_upper_bound",
]

CONFIDENCE_LEVEL = 0.95
"""Level of the one-sided upper confidence bound reported with every threshold."""

TAIL_FRACTION = 0.2
"""Share of the normal scores (the largest ones) that the exponential tail is fitted to."""

MIN_TAIL_POINTS = 2
"""Fewest excesses the tail is fitted to (so at least ``MIN_TAIL_POINTS + 1`` normals are needed)."""


class FalseAlarmRule(str, Enum):
    """How a false-alarm threshold was set (see the module docstring)."""

    ORDER_STATISTIC = "order_statistic"
    TAIL_FIT = "tail_fit"
    LARGEST = "largest"


@dataclass(frozen=True)
class FalseAlarmThreshold:
    """A threshold set at a false-alarm budget, and what is known about its true false-alarm rate.

    Attributes:
        threshold: Flag a value strictly greater than this.
        rule: How it was set (:class:`FalseAlarmRule` value).
        count: Number of normal values it was set from.
        rank: ``k``: the threshold is the ``k``-th largest normal value (0 for the tail fit).
        budget: The false-alarm rate asked for.
        expected_rate: The expected false-alarm rate on new normals: ``k / (n + 1)`` for an order statistic (at most
            the budget), the budget for the tail fit (under its exponential-tail assumption), ``1 / (n + 1)`` for the
            largest value.
        upper_bound: One-sided :data:`CONFIDENCE_LEVEL` upper confidence bound of the true rate (distribution-free;
            for the tail fit that of the largest normal value, which the threshold is never below). ``nan`` when
            SciPy is not installed.
    """

    threshold: float
    rule: str
    count: int
    rank: int
    budget: float
    expected_rate: float
    upper_bound: float

    def as_dict(self) -> dict[str, Any]:
        """Plain-data form, for logs and checkpoints."""
        return asdict(self)


def check_rate(value: float, option: str) -> float:
    """Return a rate in ``(0, 1)`` as a float, or raise naming the option.

    Raises:
        ValueError: If ``value`` is not a number strictly between 0 and 1.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        msg = f"{option}={value!r} is not accepted; it must be a number in (0, 1), e.g. 0.01 for 1 %."
        raise ValueError(msg)
    return float(value)


def rate_upper_bound(rank: int, count: int, level: float = CONFIDENCE_LEVEL) -> float:
    """One-sided upper confidence bound of the false-alarm rate of the ``rank``-th largest of ``count`` normals.

    The rate is ``Beta(rank, count + 1 - rank)``-distributed for continuous scores, whatever their distribution.

    Args:
        rank: ``k`` (at least 1).
        count: ``n`` (at least ``k``).
        level: Confidence level. Defaults to :data:`CONFIDENCE_LEVEL`.

    Returns:
        The ``level`` quantile of that Beta distribution; ``nan`` without SciPy.
    """
    try:
        from scipy.stats import beta
    except ImportError:  # pragma: no cover - SciPy comes with scikit-image, a dependency
        return float("nan")
    return float(beta.ppf(level, rank, count + 1 - rank))


def false_alarm_threshold(values: torch.Tensor, rate: float) -> FalseAlarmThreshold | None:
    """The threshold above which new normal values fall with expected probability at most ``rate``.

    See the module docstring for the rule and its guarantees.

    Args:
        values: Scores (or distances, or pixels) of held-out normal images; any shape, flattened. NaNs are ignored.
        rate: The false-alarm budget, in ``(0, 1)``.

    Returns:
        The threshold and its statistics, or ``None`` when there is no value.
    """
    rate = check_rate(rate, "rate")
    flat = values.detach().flatten().to("cpu")
    # float32 at least (pixel sets can hold millions of values); a float32 threshold is then one of the values.
    flat = flat.float() if not flat.is_floating_point() or flat.element_size() < 4 else flat
    flat = flat[~torch.isnan(flat)]
    count = int(flat.numel())
    if count == 0:
        return None
    rank = math.floor(rate * (count + 1) + 1e-9)
    if rank >= 1:
        # The k-th largest value; kthvalue counts from the smallest and has no size limit (torch.quantile has).
        threshold = float(torch.kthvalue(flat, count - rank + 1).values)
        return FalseAlarmThreshold(
            threshold=threshold,
            rule=FalseAlarmRule.ORDER_STATISTIC.value,
            count=count,
            rank=rank,
            budget=rate,
            expected_rate=rank / (count + 1),
            upper_bound=rate_upper_bound(rank, count),
        )
    largest = float(flat.max())
    tail = min(count - 1, max(MIN_TAIL_POINTS, math.ceil(TAIL_FRACTION * count)))
    if tail >= MIN_TAIL_POINTS:
        top = torch.topk(flat, tail + 1).values  # descending: top[tail] is u, the (m + 1)-th largest
        base = float(top[tail])
        mean_excess = float((top[:tail] - base).mean())
        if mean_excess > 0:
            exceed_base = (tail + 1) / (count + 1)
            threshold = base + tail * mean_excess * ((exceed_base / rate) ** (1 / tail) - 1)
            return FalseAlarmThreshold(
                threshold=max(threshold, largest),
                rule=FalseAlarmRule.TAIL_FIT.value,
                count=count,
                rank=0,
                budget=rate,
                expected_rate=rate,
                upper_bound=rate_upper_bound(1, count),
            )
    return FalseAlarmThreshold(
        threshold=largest,
        rule=FalseAlarmRule.LARGEST.value,
        count=count,
        rank=1,
        budget=rate,
        expected_rate=1 / (count + 1),
        upper_bound=rate_upper_bound(1, count),
    )
