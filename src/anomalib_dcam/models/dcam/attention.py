# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Distributed Convolutional Attention Module (DCAM) blocks.

One CBAM-style block sits on the student's feature map at every pyramid level. The blocks are used during training
only: they re-weight the student features that the loss sees (and, in-line, what later student stages see), and they
are never called at inference, so the deployed model is exactly teacher + student.

Each block returns the masked features and the mask it applied, so the loss can also mask the teacher features.

Example:
    >>> import torch
    >>> block = build_attention_block(AttentionType.CBAM, channels=64)
    >>> masked, mask = block(torch.randn(2, 64, 16, 16))
    >>> masked.shape, mask.shape
    (torch.Size([2, 64, 16, 16]), torch.Size([2, 64, 16, 16]))
"""

from enum import Enum

import torch
from torch import nn


class AttentionType(str, Enum):
    """Which DCAM block to place on each student pyramid level."""

    CHANNEL = "channel"
    SPATIAL = "spatial"
    CBAM = "cbam"
    NONE = "none"


class AttentionPlacement(str, Enum):
    """Where the DCAM blocks act.

    ``SIDE``: the masked features feed the loss only; the student's forward pass is untouched, so training and
    inference see the same student. ``INLINE``: the masked features also feed the next student stage.
    """

    SIDE = "side"
    INLINE = "inline"


class ChannelAttention(nn.Module):
    """CBAM channel attention: average- and max-pooled descriptors through a shared MLP, summed, sigmoid.

    Args:
        channels: Number of feature channels.
        reduction: Bottleneck ratio of the shared MLP (``channels -> channels // reduction -> channels``).
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1, bias=False),
        )

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the channel-scaled features and the ``(B, C, 1, 1)`` mask."""
        average = self.mlp(torch.mean(features, dim=(2, 3), keepdim=True))
        maximum = self.mlp(torch.amax(features, dim=(2, 3), keepdim=True))
        mask = torch.sigmoid(average + maximum)
        return features * mask, mask


class SpatialAttention(nn.Module):
    """CBAM spatial attention: channel-mean and channel-max maps through a 2 -> 1 convolution, sigmoid.

    Args:
        kernel_size: Size of the convolution kernel (odd).
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size=kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the position-scaled features and the ``(B, 1, H, W)`` mask."""
        descriptors = torch.cat(
            [torch.mean(features, dim=1, keepdim=True), torch.amax(features, dim=1, keepdim=True)],
            dim=1,
        )
        mask = torch.sigmoid(self.conv(descriptors))
        return features * mask, mask


class CbamAttention(nn.Module):
    """CBAM: channel attention followed by spatial attention.

    Args:
        channels: Number of feature channels.
        reduction: Bottleneck ratio of the channel MLP.
        kernel_size: Kernel size of the spatial convolution.
    """

    def __init__(self, channels: int, reduction: int = 8, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the masked features and the combined ``(B, C, H, W)`` mask."""
        features, channel_mask = self.channel(features)
        features, spatial_mask = self.spatial(features)
        return features, channel_mask * spatial_mask


def build_attention_block(attention: AttentionType, channels: int, reduction: int = 8) -> nn.Module | None:
    """Build one DCAM block, or ``None`` for :attr:`AttentionType.NONE`.

    Args:
        attention: Block type.
        channels: Channels of the feature map the block will see.
        reduction: Bottleneck ratio of the channel MLP.

    Returns:
        The block, or ``None`` when no attention is used.
    """
    if attention == AttentionType.CHANNEL:
        return ChannelAttention(channels, reduction)
    if attention == AttentionType.SPATIAL:
        return SpatialAttention()
    if attention == AttentionType.CBAM:
        return CbamAttention(channels, reduction)
    return None
