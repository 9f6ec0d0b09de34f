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

Optional terms, all off by default:

- hard-position distillation (AAND's HKD): with ``hard_fraction < 1`` the pixel term averages only the hardest
  ``hard_fraction`` of the positions of each level (largest cosine distance), and ``global`` adds, per level,
  ``1 - cos`` between the whole flattened teacher and student maps;
- ``push`` (DMDD's "widening the distance in anomalous regions"): with synthetic defects, inside each defect's mask
  a hinge ``max(0, margin - d)`` on the pixel cosine distance ``d`` between the student's features and the teacher's
  features *of the corrupted image* pushes the student away from reproducing the defect; it is 0 outside the masks.

Every term is then summed (``batch_reduction="sum"``, anomalib's STFPM convention, so learning rates carry over
between Stfpm and Dcam) or averaged (``"mean"``) over the batch. Each term has its own weight; a zero weight skips it.

Example:
    >>> import torch
    >>> loss = DcamLoss()
    >>> features = {"layer1": torch.randn(2, 8, 4, 4)}
    >>> float(loss(features, features).total)  # identical features
    0.0
"""

import math
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
    global_cosine: torch.Tensor | None = None
    push: torch.Tensor | None = None

    def terms(self) -> dict[str, torch.Tensor]:
        """The active unweighted terms by log name (``pixel``, ``channel``, ``kd``, ``global``, ``push``)."""
        named = {
            "pixel": self.pixel,
            "channel": self.channel,
            "kd": self.kd,
            "global": self.global_cosine,
            "push": self.push,
        }
        return {name: term for name, term in named.items() if term is not None}


def pixel_cosine_distance(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Per image, ``1 - cos`` across channels, averaged over positions. Returns shape ``(B,)``."""
    return pixel_cosine_distance_map(teacher, student).flatten(1).mean(dim=1)


def pixel_cosine_distance_map(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` across channels at every position. Returns shape ``(B, H, W)``."""
    return 0.5 * (F.normalize(teacher, dim=1) - F.normalize(student, dim=1)).pow(2).sum(dim=1)


def hard_pixel_cosine_distance(teacher: torch.Tensor, student: torch.Tensor, count: int) -> torch.Tensor:
    """Per image, the mean pixel cosine distance of the ``count`` hardest positions (AAND's HKD). Shape ``(B,)``."""
    distance = pixel_cosine_distance_map(teacher, student).flatten(1)
    return distance.topk(min(count, distance.shape[1]), dim=1).values.mean(dim=1)


def global_cosine_distance(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Per image, ``1 - cos`` between the whole flattened ``C*H*W`` maps. Returns shape ``(B,)``."""
    return 1.0 - F.cosine_similarity(teacher.flatten(1), student.flatten(1), dim=1, eps=_COSINE_EPS)


def push_away_distance(
    corrupted_teacher: torch.Tensor,
    student: torch.Tensor,
    masks: torch.Tensor,
    margin: float,
) -> torch.Tensor:
    """Per image, the hinge ``max(0, margin - d)`` averaged over the defect mask (0 for an image without defect).

    Args:
        corrupted_teacher: Teacher features of the corrupted image ``(B, C, H, W)``.
        student: Student features of the corrupted image ``(B, C, H, W)``.
        masks: Defect masks at image resolution ``(B, 1, H_img, W_img)``, 1 inside a defect.
        margin: Distance beyond which the student is far enough from the corrupted teacher.

    Returns:
        Shape ``(B,)``.
    """
    # Fraction of each feature cell covered by the defect: the weight of that position.
    weights = F.adaptive_avg_pool2d(masks.to(student.dtype), student.shape[-2:]).squeeze(1)
    hinge = F.relu(margin - pixel_cosine_distance_map(corrupted_teacher, student))
    return (weights * hinge).flatten(1).sum(dim=1) / weights.flatten(1).sum(dim=1).clamp_min(1.0)


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
        channel_weight: Weight of the channel cosine-distance term (the paper uses ``1.0``). Defaults to ``0.0``, as
            :class:`~anomalib_dcam.models.dcam.Dcam`.
        kd_weight: Weight of the spatial KL-distillation term (the paper uses ``1.0``). Defaults to ``0.0``, as
            :class:`~anomalib_dcam.models.dcam.Dcam`.
        temperature: Softmax temperature of the KD term, ``> 0``. Defaults to ``1.0``.
        kd_reduction: ``"mean"`` or ``"sum"`` of the KD term over channels. ``"sum"`` grows with the channel count and
            swamps the cosine terms (hundreds of times larger); ``"mean"`` keeps the terms balanced. Defaults to
            ``"mean"``.
        batch_reduction: ``"sum"`` (anomalib's STFPM convention) or ``"mean"`` over the batch. Defaults to ``"sum"``.
        hard_fraction: Fraction of each level's positions, hardest first, that the pixel term averages, in
            ``(0, 1]``; ``1`` is STFPM's mean over all positions. Defaults to ``1.0``.
        global_weight: Weight of the global cosine term of hard-position distillation. Defaults to ``0.0``.
        push_weight: Weight of the push-away term (needs synthetic defects). Defaults to ``0.0``.
        push_margin: Margin of the push-away hinge on the pixel cosine distance, in ``(0, 2]``. Defaults to ``0.5``.

    Raises:
        ValueError: If a weight is negative, all distillation weights are zero, the temperature is not positive, a
            fraction or margin is out of range, or a reduction name is unknown.
    """

    def __init__(
        self,
        pixel_weight: float = 1.0,
        channel_weight: float = 0.0,
        kd_weight: float = 0.0,
        temperature: float = 1.0,
        kd_reduction: Reduction | str = Reduction.MEAN,
        batch_reduction: Reduction | str = Reduction.SUM,
        hard_fraction: float = 1.0,
        global_weight: float = 0.0,
        push_weight: float = 0.0,
        push_margin: float = 0.5,
    ) -> None:
        super().__init__()
        self.pixel_weight = check_non_negative(pixel_weight, "pixel_weight")
        self.channel_weight = check_non_negative(channel_weight, "channel_weight")
        self.kd_weight = check_non_negative(kd_weight, "kd_weight")
        self.global_weight = check_non_negative(global_weight, "global_weight")
        self.push_weight = check_non_negative(push_weight, "push_weight")
        if self.pixel_weight == self.channel_weight == self.kd_weight == self.global_weight == 0:
            msg = (
                "pixel_weight, channel_weight, kd_weight and global_weight are all 0; at least one distillation term "
                "must be switched on."
            )
            raise ValueError(msg)
        self.hard_fraction = check_positive(hard_fraction, "hard_fraction")
        if self.hard_fraction > 1:
            msg = f"hard_fraction={hard_fraction!r} is not accepted; it must be in (0, 1] (1 uses every position)."
            raise ValueError(msg)
        self.push_margin = check_positive(push_margin, "push_margin")
        if self.push_margin > 2:
            msg = f"push_margin={push_margin!r} is not accepted; it must be in (0, 2], the range of 1 - cos."
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
        corrupted_teacher_features: dict[str, torch.Tensor] | None = None,
        anomaly_masks: torch.Tensor | None = None,
    ) -> DcamLossOutput:
        """Compute the loss over all pyramid levels.

        Args:
            teacher_features: Teacher feature maps by level name, each ``(B, C, H, W)`` (of the clean images).
            student_features: Student feature maps with the same keys and shapes (of the images the student saw).
            corrupted_teacher_features: Teacher features of the student's (corrupted) images, for the push-away term.
            anomaly_masks: Synthetic defect masks ``(B, 1, H, W)``, for the push-away term.

        Returns:
            The weighted total and the unweighted value of every active term, each summed over levels, in float32.
        """
        with torch.autocast(device_type=next(iter(teacher_features.values())).device.type, enabled=False):
            return self._forward_float32(
                teacher_features,
                student_features,
                corrupted_teacher_features,
                anomaly_masks,
            )

    def _forward_float32(
        self,
        teacher_features: dict[str, torch.Tensor],
        student_features: dict[str, torch.Tensor],
        corrupted_teacher_features: dict[str, torch.Tensor] | None,
        anomaly_masks: torch.Tensor | None,
    ) -> DcamLossOutput:
        use_push = self.push_weight > 0 and corrupted_teacher_features is not None and anomaly_masks is not None
        pixel_terms, channel_terms, kd_terms, global_terms, push_terms = [], [], [], [], []
        for level, teacher in teacher_features.items():
            # Cosine, softmax and KL in float32 whatever the autocast dtype of the features (mixed precision).
            teacher, student = teacher.float(), student_features[level].float()
            if self.pixel_weight > 0:
                if self.hard_fraction < 1:
                    count = math.ceil(self.hard_fraction * teacher.shape[-2] * teacher.shape[-1])
                    per_image = hard_pixel_cosine_distance(teacher, student, count)
                else:
                    per_image = pixel_cosine_distance(teacher, student)
                pixel_terms.append(self._reduce_batch(per_image))
            if self.global_weight > 0:
                global_terms.append(self._reduce_batch(global_cosine_distance(teacher, student)))
            if use_push:
                corrupted = corrupted_teacher_features[level].float()
                push = push_away_distance(corrupted, student, anomaly_masks.float(), self.push_margin)
                push_terms.append(self._reduce_batch(push))
            if self.channel_weight > 0:
                channel_terms.append(self._reduce_batch(channel_cosine_distance(teacher, student).mean(dim=1)))
            if self.kd_weight > 0:
                divergence = spatial_kl_divergence(teacher, student, self.temperature)
                per_image = divergence.mean(dim=1) if self.kd_reduction == Reduction.MEAN else divergence.sum(dim=1)
                kd_terms.append(self._reduce_batch(per_image))

        pixel, channel, kd, global_cosine, push = (
            torch.stack(terms).sum() if terms else None
            for terms in (pixel_terms, channel_terms, kd_terms, global_terms, push_terms)
        )
        weighted = [
            weight * term
            for weight, term in (
                (self.pixel_weight, pixel),
                (self.channel_weight, channel),
                (self.kd_weight, kd),
                (self.global_weight, global_cosine),
                (self.push_weight, push),
            )
            if term is not None
        ]
        return DcamLossOutput(
            total=torch.stack(weighted).sum(),
            pixel=pixel,
            channel=channel,
            kd=kd,
            global_cosine=global_cosine,
            push=push,
        )
