# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

r"""Deployed scores that keep the raw scores' order: a strictly increasing map to ``(0, 1)``, threshold at 0.5.

anomalib's min-max normalisation, ``clamp((x - t) / (max - min) + 0.5, 0, 1)``, maps every score outside the
validation range to exactly 0 or 1, so distinct raw scores tie and the ranking (and AUROC) of the deployed scores is
worse than the raw scores'. :func:`threshold_centred_map` replaces it with

.. math::

    z = \frac{x - t}{s}, \qquad
    y = \begin{cases} 1 - \dfrac{1}{2(1 + z)} & z \ge 0 \\[4pt] \dfrac{1}{2(1 - z)} & z < 0 \end{cases}

a strictly increasing function of the raw score :math:`x` with :math:`y(t) = 0.5` at the threshold :math:`t`,
:math:`y \to 0` and :math:`y \to 1` only asymptotically (polynomially, so float32 keeps distinct values far into the
tails, unlike a logistic, which rounds to 1.0 about 17 scales above the threshold). Its scale :math:`s` is the
distance from the typical normal score (the median of the held-out normals) to the threshold, so that the typical
normal image scores 0.25 and an image as far above the threshold scores 0.75, in every category: one cut (0.5, or
``1 - sensitivity``) works across products.

Each branch is a chain of monotone float operations (subtract, divide, add, reciprocal), so in float32 the map never
inverts two scores. Float32 spaces its values 6e-8 apart near 1, so far above the threshold raw scores closer than
about :math:`1.2 \cdot 10^{-7} (1 + z)^2 s` can round to the same value (within 50 scales of the threshold, steps of
1/2000 of a scale stay distinct: ``tests/test_false_alarm.py``); the output reaches 1.0 only beyond about 8 million
scales. It is plain tensor arithmetic and exports to ONNX and OpenVINO.
"""

from __future__ import annotations

import torch

__all__ = ["normal_scale", "threshold_centred_map"]


def threshold_centred_map(
    values: torch.Tensor,
    threshold: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """Map raw scores strictly increasingly to ``(0, 1)``, ``threshold`` to exactly 0.5.

    Args:
        values: Raw scores or anomaly maps.
        threshold: Raw threshold, broadcastable to ``values`` (per image, per category or one value).
        scale: Positive scale, broadcastable to ``values``; raw values one ``scale`` below the threshold map to 0.25.

    Returns:
        The mapped values, same shape and dtype as ``values``. Where ``threshold`` or ``scale`` is NaN (not
        calibrated), or ``scale`` is not positive, the raw values pass through unchanged, as anomalib passes
        un-normalised values through.
    """
    usable = ~torch.isnan(threshold) & (scale > 0)  # NaN > 0 is False
    safe_scale = torch.where(usable, scale, torch.ones_like(scale))
    safe_threshold = torch.where(usable, threshold, torch.zeros_like(threshold))
    z = (values - safe_threshold) / safe_scale
    above = 1 - 0.5 / (1 + z.clamp(min=0))
    below = 0.5 / (1 - z.clamp(max=0))
    mapped = torch.where(z >= 0, above, below)
    return torch.where(usable, mapped, values)


def normal_scale(
    threshold: float,
    normal_median: float | None,
    fallback_range: float | None,
) -> float:
    """The scale of :func:`threshold_centred_map`: how far the typical normal score lies below the threshold.

    Args:
        threshold: The raw threshold.
        normal_median: Median raw score of the held-out normals; ``None`` without any.
        fallback_range: Used when the median is missing or not below the threshold (e.g. an F1 threshold that fell
            to the lowest score): half the range of all validation scores, as anomalib's min-max width.

    Returns:
        A positive scale, or ``nan`` when nothing gives one.
    """
    for candidate in (
        None if normal_median is None else threshold - normal_median,
        None if fallback_range is None else fallback_range / 2,
    ):
        if candidate is not None and candidate > 0 and candidate == candidate:
            return float(candidate)
    return float("nan")
