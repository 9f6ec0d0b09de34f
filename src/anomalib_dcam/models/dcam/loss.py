# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""DCAM distillation loss: pixel cosine distance, channel cosine distance and spatial KL distillation.

All three terms compare teacher and student feature maps of shape ``(B, C, H, W)`` at every pyramid level and are
summed over the levels:

- ``pixel``: STFPM's term. At each position, ``1 - cos`` between the teacher and student channel vectors, averaged
  over positions (computed as ``0.5 * ||t/|t| - s/|s|||^2``, exactly as anomalib's ``STFPMLoss``).
- ``channel``: each channel's ``H*W`` map is one vector; ``1 - cos`` between teacher and student, averaged over
  channels.
- ``kd``: per channel, a softmax over the ``H*W`` positions at temperature ``T`` for teacher and student, and
  ``KL(teacher || student)`` summed over positions, then averaged (``kd_reduction="mean"``) or summed
  (``kd_reduction="sum"``, the paper's literal wording) over channels.

Every term is then summed (``batch_reduction="sum"``, anomalib's STFPM convention, so learning rates carry over
between Stfpm and Dcam) or averaged (``"mean"``) over the batch. Each term has its own weight; a zero weight skips it.

Example:
    >>> import torch
    >>> loss = DcamLoss()
    >>> features = {"layer1": torch.randn(2, 8, 4, 4)}
    >>> float(loss(features, features).total)  # identical features
    0.0
"""

from enum import Enum
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from anomalib_dcam._validation import check_non_negative, check_positive, coerce_choice

# Same eps as F.normalize, so the pixel term matches STFPMLoss bit for bit.
_COSINE_EPS = 1e-12


class Reduction(str, Enum):
    """How a loss term is reduced over channels or over the batch."""

    MEAN = "mean"
    SUM = "sum"


class DcamLossOutput(NamedTuple):
    """The weighted total and every unweighted term (``None`` where a term is switched off)."""

    total: torch.Tensor
    pixel: torch.Tensor | None
    channel: torch.Tensor | None
    kd: torch.Tensor | None


def pixel_cosine_distance(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Per image, ``1 - cos`` across channels, averaged over positions. Returns shape ``(B,)``."""
    distance = 0.5 * (F.normalize(teacher, dim=1) - F.normalize(student, dim=1)).pow(2).sum(dim=1)
    return distance.flatten(1).mean(dim=1)


def channel_cosine_distance(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Per image and channel, ``1 - cos`` between the flattened ``H*W`` maps. Returns shape ``(B, C)``."""
    return 1.0 - F.cosine_similarity(teacher.flatten(2), student.flatten(2), dim=2, eps=_COSINE_EPS)


def spatial_kl_divergence(teacher: torch.Tensor, student: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per image and channel, ``KL(softmax(t/T) || softmax(s/T))`` over positions. Returns shape ``(B, C)``."""
    teacher_log_probs = F.log_softmax(teacher.flatten(2) / temperature, dim=2)
    student_log_probs = F.log_softmax(student.flatten(2) / temperature, dim=2)
    return F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True).sum(dim=2)


class DcamLoss(nn.Module):
    """Weighted sum of the pixel CD, channel CD and spatial KD terms over all pyramid levels.

    Args:
        pixel_weight: Weight of the STFPM pixel cosine-distance term. Defaults to ``1.0``.
        channel_weight: Weight of the channel cosine-distance term. Defaults to ``1.0``.
        kd_weight: Weight of the spatial KL-distillation term. Defaults to ``1.0``.
        temperature: Softmax temperature of the KD term, ``> 0``. Defaults to ``1.0``.
        kd_reduction: ``"mean"`` or ``"sum"`` of the KD term over channels. ``"sum"`` grows with the channel count and
            swamps the cosine terms (hundreds of times larger); ``"mean"`` keeps the terms balanced. Defaults to
            ``"mean"``.
        batch_reduction: ``"sum"`` (anomalib's STFPM convention) or ``"mean"`` over the batch. Defaults to ``"sum"``.

    Raises:
        ValueError: If a weight is negative, all weights are zero, the temperature is not positive, or a reduction
            name is unknown.
    """

    def __init__(
        self,
        pixel_weight: float = 1.0,
        channel_weight: float = 1.0,
        kd_weight: float = 1.0,
        temperature: float = 1.0,
        kd_reduction: Reduction | str = Reduction.MEAN,
        batch_reduction: Reduction | str = Reduction.SUM,
    ) -> None:
        super().__init__()
        self.pixel_weight = check_non_negative(pixel_weight, "pixel_weight")
        self.channel_weight = check_non_negative(channel_weight, "channel_weight")
        self.kd_weight = check_non_negative(kd_weight, "kd_weight")
        if self.pixel_weight == self.channel_weight == self.kd_weight == 0:
            msg = "pixel_weight, channel_weight and kd_weight are all 0; at least one loss term must be switched on."
            raise ValueError(msg)
        self.temperature = check_positive(temperature, "temperature")
        self.kd_reduction = coerce_choice(kd_reduction, Reduction, "kd_reduction")
        self.batch_reduction = coerce_choice(batch_reduction, Reduction, "batch_reduction")

    def _reduce_batch(self, per_image: torch.Tensor) -> torch.Tensor:
        return per_image.sum() if self.batch_reduction == Reduction.SUM else per_image.mean()

    def forward(
        self,
        teacher_features: dict[str, torch.Tensor],
        student_features: dict[str, torch.Tensor],
    ) -> DcamLossOutput:
        """Compute the loss over all pyramid levels.

        Args:
            teacher_features: Teacher feature maps by level name, each ``(B, C, H, W)``.
            student_features: Student feature maps with the same keys and shapes.

        Returns:
            The weighted total and the unweighted value of every active term, each summed over levels.
        """
        pixel_terms, channel_terms, kd_terms = [], [], []
        for level, teacher in teacher_features.items():
            student = student_features[level]
            if self.pixel_weight > 0:
                pixel_terms.append(self._reduce_batch(pixel_cosine_distance(teacher, student)))
            if self.channel_weight > 0:
                channel_terms.append(self._reduce_batch(channel_cosine_distance(teacher, student).mean(dim=1)))
            if self.kd_weight > 0:
                divergence = spatial_kl_divergence(teacher, student, self.temperature)
                per_image = divergence.mean(dim=1) if self.kd_reduction == Reduction.MEAN else divergence.sum(dim=1)
                kd_terms.append(self._reduce_batch(per_image))

        pixel = torch.stack(pixel_terms).sum() if pixel_terms else None
        channel = torch.stack(channel_terms).sum() if channel_terms else None
        kd = torch.stack(kd_terms).sum() if kd_terms else None
        weighted = [
            weight * term
            for weight, term in ((self.pixel_weight, pixel), (self.channel_weight, channel), (self.kd_weight, kd))
            if term is not None
        ]
        return DcamLossOutput(total=torch.stack(weighted).sum(), pixel=pixel, channel=channel, kd=kd)
