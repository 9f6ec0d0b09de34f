# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""A training order that depends only on the seed and the epoch: a resumed run trains like an uninterrupted one.

PyTorch's ``RandomSampler`` draws each epoch's order from the global random state, which a checkpoint does not hold:
after ``--ckpt_path last.ckpt`` the remaining epochs see other orders than the uninterrupted run. Lightning calls
``set_epoch`` on any sampler that has it (as it does for ``DistributedSampler``), so this one reseeds itself every
epoch from ``seed + epoch``.
"""

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import Sampler


class EpochSeededRandomSampler(Sampler[int]):
    """A random permutation per epoch, drawn from ``seed + epoch``.

    Args:
        data_source: The dataset (only its length is used).
        seed: Base seed of every epoch's order.
    """

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        self.data_source = data_source
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch`` (called by Lightning at the start of every training epoch)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(len(self.data_source), generator=generator).tolist())

    def __len__(self) -> int:
        return len(self.data_source)
