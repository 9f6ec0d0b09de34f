# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Cache of the frozen teacher's feature pyramid, computed once per training image and reused in later epochs.

The teacher never changes during training and, with deterministic pre-processing (anomalib's default: resize and
ImageNet normalisation, no augmentation), it sees the same image every epoch, so its features are the same every
epoch. :class:`TeacherFeatureCache` stores them per image, keyed so that a stale or wrong entry can never be served:

- the image file's path, modification time and size (a file changed on disk is a miss);
- a fingerprint of the exact pre-processing: the dataset's augmentations, the pre-processor's transform and the
  input shape. The cache is emptied whenever the fingerprint changes and at the start of every fit.

The cache refuses to run (and says why in the log) when a training transform is random or not known to be
deterministic, when the batches carry no image paths, or when no datamodule tells which transforms the training
images go through. ``"auto"`` (Dcam's default) is ``"memory"`` where that is safe: it decides at the start of each fit
and, where the cache cannot be used or would not fit ``max_gb``, trains without it, saying why at INFO level.

Storage is ``"memory"`` (host RAM) or ``"disk"`` (one memory-mapped file per pyramid level, for datasets larger than
RAM), up to ``max_gb``; images beyond the cap are recomputed every epoch. Features are stored in float16 by default
(half the memory of float32, loss unchanged within 1e-3 relative; ``dtype="float32"`` stores them exactly).
Cost per image at 256 px, float16: ``tf_efficientnet_lite0`` 0.34 MB, ``resnet18`` 0.92 MB.

Example:
    >>> cache = TeacherFeatureCache(storage="memory", max_gb=1.0)
    >>> cache.reset(fingerprint="resize256", expected_items=2)
    >>> keys = ["a.png|1|10", "b.png|1|10"]
    >>> cache.get(keys)[0] is None
    True
"""

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

from anomalib_dcam._validation import check_positive, coerce_choice

__all__ = [
    "CacheStorage",
    "TeacherCacheStats",
    "TeacherFeatureCache",
    "image_keys",
    "non_deterministic_transforms",
]

logger = logging.getLogger(__name__)


class CacheStorage(str, Enum):
    """Where the teacher-feature cache keeps its entries."""

    OFF = "off"
    MEMORY = "memory"
    DISK = "disk"
    AUTO = "auto"  # "memory" when the transforms are deterministic and the training set fits max_gb, else off


class CacheDtype(str, Enum):
    """Storage precision of cached teacher features."""

    FLOAT16 = "float16"
    FLOAT32 = "float32"


# torchvision v2 transforms whose output depends on the input only. Anything else (every Random*, ColorJitter,
# AutoAugment, ..., and any unknown class) is treated as random, so the cache refuses rather than guesses.
DETERMINISTIC_TRANSFORMS = (
    v2.Compose,
    v2.Resize,
    v2.CenterCrop,
    v2.Normalize,
    v2.ToDtype,
    v2.ToImage,
    v2.ToPureTensor,
    v2.Grayscale,
    v2.RGB,
    v2.Identity,
)


def non_deterministic_transforms(transform: object) -> list[str]:
    """Names of the parts of a transform that are random or not known to be deterministic.

    Args:
        transform: A torchvision transform, a ``Compose`` of them, or ``None``.

    Returns:
        Class names of the offending transforms; empty when the transform is deterministic.
    """
    if transform is None:
        return []
    if isinstance(transform, v2.Compose):
        return [name for part in transform.transforms for name in non_deterministic_transforms(part)]
    # anomalib's exportable variants subclass the torchvision ones (e.g. ExportableCenterCrop).
    if isinstance(transform, DETERMINISTIC_TRANSFORMS):
        return []
    return [type(transform).__name__]


def image_keys(image_paths: Sequence[str]) -> list[str]:
    """Cache keys of image files: path, modification time (ns) and size, so that an edited file is a miss."""
    keys = []
    for path in image_paths:
        status = os.stat(path)
        keys.append(f"{os.path.abspath(path)}|{status.st_mtime_ns}|{status.st_size}")
    return keys


@dataclass
class TeacherCacheStats:
    """Hit/miss accounting of one fit.

    ``hits`` were served from the cache, ``misses`` computed by the teacher (and stored, unless the cache was full,
    which ``overflow`` counts).
    """

    hits: int = 0
    misses: int = 0
    overflow: int = 0

    @property
    def hit_rate(self) -> float:
        """Fraction of looked-up images served from the cache."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class TeacherFeatureCache:
    """Per-image store of the teacher's feature pyramid, in host memory or in memory-mapped files.

    Args:
        storage: ``"memory"``, ``"disk"`` or ``"auto"``: memory storage that stays off until the start of a fit decides
            (:attr:`auto`), and that falls back to no cache quietly (INFO, not WARNING). Defaults to ``"memory"``.
        max_gb: Most gigabytes the entries may take; images beyond it are recomputed every epoch. Defaults to ``4.0``.
        dtype: ``"float16"`` (default) or ``"float32"`` storage.
        directory: Folder of the disk files; ``None`` for a temporary folder. Each fit starts the files anew.

    Raises:
        ValueError: If an option is outside its accepted values; the message names it.
    """

    def __init__(
        self,
        storage: CacheStorage | str = CacheStorage.MEMORY,
        max_gb: float = 4.0,
        dtype: CacheDtype | str = CacheDtype.FLOAT16,
        directory: str | Path | None = None,
    ) -> None:
        self.storage = coerce_choice(storage, CacheStorage, "teacher_cache")
        if self.storage == CacheStorage.OFF:
            msg = "teacher_cache='off' needs no TeacherFeatureCache; use 'memory', 'disk' or 'auto'."
            raise ValueError(msg)
        self.auto = self.storage == CacheStorage.AUTO
        if self.auto:
            self.storage = CacheStorage.MEMORY
        self.max_bytes = int(check_positive(max_gb, "teacher_cache_max_gb") * 1024**3)
        self.dtype = coerce_choice(dtype, CacheDtype, "teacher_cache_dtype")
        self.directory = Path(directory) if directory is not None else None
        self.stats = TeacherCacheStats()
        # "auto" is off until a fit has checked the transforms and the size (``reset`` switches it on): a training step
        # outside a fit trains on the teacher's own, unrounded features.
        self.disabled_reason: str | None = "teacher_cache='auto' decides at the start of fit" if self.auto else None
        self._fingerprint: str | None = None
        self._expected_items = 0
        self._slots: dict[str, int] = {}
        self._store: dict[str, torch.Tensor] = {}
        self._capacity = 0
        self._temporary_directory: str | None = None
        self._warned_full = False

    @property
    def enabled(self) -> bool:
        """Whether the cache serves and stores entries (``False`` once :meth:`disable` was called)."""
        return self.disabled_reason is None

    @property
    def stored_items(self) -> int:
        """Number of images whose features are stored."""
        return len(self._slots)

    @property
    def stored_bytes(self) -> int:
        """Bytes taken by the stored entries."""
        per_item = sum(tensor[0].numel() * tensor.element_size() for tensor in self._store.values())
        return per_item * len(self._slots)

    def disable(self, reason: str) -> None:
        """Stop using the cache for this fit and log why: a warning when it was asked for, INFO under ``"auto"``."""
        if self.disabled_reason is None:
            if self.auto:
                logger.info("Teacher-feature cache off (teacher_cache='auto'): %s", reason)
            else:
                logger.warning("Teacher-feature cache disabled: %s", reason)
        self.disabled_reason = reason
        self._release()

    def reset(self, fingerprint: str, expected_items: int) -> None:
        """Empty the cache for a new fit (or a changed pre-processing fingerprint).

        Args:
            fingerprint: Description of the exact pre-processing; part of every key.
            expected_items: Number of training images, the most entries the cache will hold.
        """
        self._release()
        self.stats = TeacherCacheStats()
        self.disabled_reason = None
        self._fingerprint = fingerprint
        self._expected_items = max(int(expected_items), 1)
        self._warned_full = False

    def bytes_per_item(self, features: dict[str, torch.Tensor]) -> int:
        """Bytes one image's pyramid takes in the store, from a batch of features (first dimension: images)."""
        itemsize = 2 if self.dtype == CacheDtype.FLOAT16 else 4
        return sum(tensor[0].numel() for tensor in features.values()) * itemsize

    def get(self, keys: Sequence[str]) -> list[int | None]:
        """Slots of the cached entries of ``keys`` (``None`` for a miss), counted as hits and misses."""
        slots = [self._slots.get(self._full_key(key)) for key in keys]
        hits = sum(slot is not None for slot in slots)
        self.stats.hits += hits
        self.stats.misses += len(slots) - hits
        return slots

    def read(self, slots: Sequence[int], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Features of stored entries, stacked in the order of ``slots``."""
        index = torch.as_tensor(list(slots), dtype=torch.long)
        return {level: store[index].to(device=device, dtype=dtype) for level, store in self._store.items()}

    def as_stored(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``features`` rounded as the store keeps them, so that an image trains on the same values in every epoch.

        With float16 storage a freshly computed pyramid would otherwise differ from its later reads; a run resumed
        from a checkpoint (whose cache starts empty) then trains exactly as the uninterrupted run did.
        """
        if self.dtype != CacheDtype.FLOAT16:
            return features
        return {level: values.to(torch.float16).to(values.dtype) for level, values in features.items()}

    def put(self, keys: Sequence[str], features: dict[str, torch.Tensor]) -> None:
        """Store the features of a batch (first dimension in the order of ``keys``) while there is room."""
        if not self._store:
            self._allocate(features)
        for row, key in enumerate(keys):
            full_key = self._full_key(key)
            if full_key in self._slots:
                continue
            if len(self._slots) >= self._capacity:
                self.stats.overflow += 1
                if not self._warned_full:
                    logger.warning(
                        "Teacher-feature cache is full (%d images, %.2f GB, teacher_cache_max_gb=%.2f); the other "
                        "images are recomputed every epoch. Raise teacher_cache_max_gb or use teacher_cache='disk'.",
                        len(self._slots),
                        self.stored_bytes / 1024**3,
                        self.max_bytes / 1024**3,
                    )
                    self._warned_full = True
                continue
            slot = len(self._slots)
            for level, store in self._store.items():
                store[slot] = features[level][row].detach().to(device="cpu", dtype=store.dtype)
            self._slots[full_key] = slot

    def close(self) -> None:
        """Free the stored entries (and the disk files); the statistics stay readable."""
        self._release()

    def _full_key(self, key: str) -> str:
        return f"{self._fingerprint}|{key}"

    def _allocate(self, features: dict[str, torch.Tensor]) -> None:
        torch_dtype = torch.float16 if self.dtype == CacheDtype.FLOAT16 else torch.float32
        self._capacity = min(self._expected_items, self.max_bytes // self.bytes_per_item(features))
        if self.storage == CacheStorage.MEMORY:
            # Pages are committed as rows are written, so an unfilled capacity costs no RAM.
            self._store = {
                level: torch.empty((self._capacity, *tensor.shape[1:]), dtype=torch_dtype)
                for level, tensor in features.items()
            }
            return
        directory = self.directory
        if directory is None:
            self._temporary_directory = tempfile.mkdtemp(prefix="dcam-teacher-cache-")
            directory = Path(self._temporary_directory)
        directory.mkdir(parents=True, exist_ok=True)
        numpy_dtype = np.float16 if self.dtype == CacheDtype.FLOAT16 else np.float32
        self._store = {}
        for index, (level, tensor) in enumerate(features.items()):
            path = directory / f"level{index}_{level.replace('.', '_')}.bin"
            array = np.memmap(path, dtype=numpy_dtype, mode="w+", shape=(max(self._capacity, 1), *tensor.shape[1:]))
            self._store[level] = torch.from_numpy(array)
        logger.info("Teacher-feature cache on disk in %s (up to %d images)", directory, self._capacity)

    def _release(self) -> None:
        self._slots = {}
        self._store = {}
        self._capacity = 0
        if self._temporary_directory is not None:
            shutil.rmtree(self._temporary_directory, ignore_errors=True)
            self._temporary_directory = None
