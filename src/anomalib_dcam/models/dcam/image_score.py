# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Image score read from the anomaly map: its maximum, or the mean of its highest pixels.

STFPM scores an image by the maximum of its map, so one noisy position decides. The mean of the highest fraction of
the map's pixels is less sensitive to a single outlier while still following a small defect, as long as the defect
covers that fraction. Only tensor operations are used, so ``torch.export``, ONNX and OpenVINO trace it; ``k`` depends on
the (static) image size only.

Example:
    >>> import torch
    >>> anomaly_map = torch.zeros(1, 1, 10, 10)
    >>> anomaly_map[0, 0, 0, :2] = torch.tensor([1.0, 0.5])
    >>> ImageScore(top_fraction=0.0)(anomaly_map)
    tensor([[1.]])
    >>> ImageScore(top_fraction=0.02)(anomaly_map)
    tensor([[0.7500]])
"""

import torch
from torch import nn

from anomalib_dcam._validation import check_unit_interval


class ImageScore(nn.Module):
    """Turn a ``(B, 1, H, W)`` anomaly map into a ``(B, 1)`` image score.

    Args:
        top_fraction: ``0`` takes the map's maximum (STFPM); ``q`` in ``(0, 1]`` takes the mean of the highest
            ``max(1, round(q * H * W))`` pixels. Defaults to ``0.0``.

    Raises:
        ValueError: If ``top_fraction`` is not in ``[0, 1]``.
    """

    def __init__(self, top_fraction: float = 0.0) -> None:
        super().__init__()
        self.top_fraction = check_unit_interval(
            top_fraction,
            "image_score_top_fraction",
            "0 scores an image by the maximum of its anomaly map, e.g. 0.01 by the mean of its highest 1 % of pixels",
        )

    def forward(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """Score every map of the batch."""
        if self.top_fraction == 0.0:
            return torch.amax(anomaly_map, dim=(-2, -1))
        positions = anomaly_map.flatten(-2)
        # int() rather than round(): under TorchScript tracing (NNCF's QAT) the size is a tensor, which has no round.
        count = max(1, int(self.top_fraction * positions.shape[-1] + 0.5))
        return positions.topk(count, dim=-1).values.mean(dim=-1)
