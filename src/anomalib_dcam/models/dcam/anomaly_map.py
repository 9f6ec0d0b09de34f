# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Anomaly map of DCAM: per-level cosine distance between teacher and student, combined over levels.

At each level the map is ``1 - cos`` across channels at every position, computed as
``0.5 * ||t/|t| - s/|s|||^2`` (STFPM's form; identical in value). Every level's map is bilinearly upsampled to the
image size; the levels are then multiplied (STFPM, the default) or summed (the DCAM authors' code). An optional
Gaussian blur smooths the result. Everything here is plain tensor arithmetic so that ``torch.export`` can trace it.

Example:
    >>> import torch
    >>> generator = AnomalyMapGenerator(combine="product")
    >>> features = {"layer1": torch.randn(1, 8, 16, 16)}
    >>> generator(features, features, image_size=(64, 64)).shape
    torch.Size([1, 1, 64, 64])
"""

from enum import Enum

import torch
from anomalib.models.components import GaussianBlur2d
from torch import nn
from torch.nn import functional as F  # noqa: N812

from anomalib_dcam._validation import check_non_negative, coerce_choice


class CombineMode(str, Enum):
    """How the per-level distance maps are combined."""

    SUM = "sum"
    PRODUCT = "product"


class AnomalyMapGenerator(nn.Module):
    """Turn teacher and student features into a ``(B, 1, H, W)`` anomaly map.

    Args:
        combine: ``"product"`` (STFPM) or ``"sum"`` (the DCAM authors' code) of the upsampled per-level maps.
            Defaults to ``"product"``.
        sigma: Standard deviation, in pixels, of a Gaussian blur applied to the combined map; ``0`` disables it.
            Defaults to ``0.0``.

    Raises:
        ValueError: If ``combine`` is unknown or ``sigma`` is negative.
    """

    def __init__(self, combine: CombineMode | str = CombineMode.PRODUCT, sigma: float = 0.0) -> None:
        super().__init__()
        self.combine = coerce_choice(combine, CombineMode, "anomaly_map_combine")
        self.sigma = check_non_negative(sigma, "anomaly_map_sigma")
        self.blur: GaussianBlur2d | None = None
        if self.sigma > 0:
            kernel_size = 2 * int(4.0 * self.sigma + 0.5) + 1
            self.blur = GaussianBlur2d(kernel_size=(kernel_size, kernel_size), sigma=(self.sigma, self.sigma))

    @staticmethod
    def compute_layer_map(
        teacher_features: torch.Tensor,
        student_features: torch.Tensor,
        image_size: tuple[int, int] | torch.Size,
    ) -> torch.Tensor:
        """Cosine distance across channels at every position, upsampled to ``image_size``."""
        # Mixed precision gives bfloat16/float16 features; the map is computed in float32. Exported (float32)
        # graphs are unchanged: the dtype is known when tracing and no cast is recorded.
        if teacher_features.dtype != torch.float32:
            teacher_features = teacher_features.float()
        if student_features.dtype != torch.float32:
            student_features = student_features.float()
        distance = 0.5 * torch.sum(
            (F.normalize(teacher_features, dim=1) - F.normalize(student_features, dim=1)) ** 2,
            dim=1,
            keepdim=True,
        )
        return F.interpolate(distance, size=image_size, mode="bilinear", align_corners=False)

    def forward(
        self,
        teacher_features: dict[str, torch.Tensor],
        student_features: dict[str, torch.Tensor],
        image_size: tuple[int, int] | torch.Size,
    ) -> torch.Tensor:
        """Compute the combined anomaly map.

        Args:
            teacher_features: Teacher feature maps by level name.
            student_features: Student feature maps with the same keys.
            image_size: Output ``(height, width)``.

        Returns:
            Anomaly map of shape ``(B, 1, height, width)``.
        """
        layer_maps = [
            self.compute_layer_map(teacher, student_features[level], image_size)
            for level, teacher in teacher_features.items()
        ]
        anomaly_map = layer_maps[0]
        for layer_map in layer_maps[1:]:
            anomaly_map = anomaly_map + layer_map if self.combine == CombineMode.SUM else anomaly_map * layer_map
        if self.blur is not None:
            anomaly_map = self.blur(anomaly_map)
        return anomaly_map
