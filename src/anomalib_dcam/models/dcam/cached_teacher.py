# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""How Dcam's training uses the teacher-feature cache: start it for a fit, serve a batch's features, close it.

:class:`~anomalib_dcam.models.dcam.teacher_cache.TeacherFeatureCache` stores features; the functions here decide,
at the start of a fit, whether the cache may serve this fit (deterministic training transforms; under
``teacher_cache="auto"`` also an estimated size within the cap), and give a training batch its teacher pyramid, from
the cache where stored and from the teacher otherwise. :class:`~anomalib_dcam.models.dcam.Dcam` calls them from its
Lightning hooks.
"""

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .teacher_cache import TeacherFeatureCache, image_keys, non_deterministic_transforms

__all__ = ["cached_teacher_features", "close_teacher_cache", "start_teacher_cache"]

logger = logging.getLogger(__name__)


def start_teacher_cache(
    cache: TeacherFeatureCache,
    teacher: nn.Module,
    train_data: Any,
    transform: Any,
    device: torch.device,
) -> None:
    """Empty the cache for this fit, or disable it when the training images are not the same every epoch.

    Under ``teacher_cache="auto"`` the cache is also left off when the training set's estimated pyramid exceeds
    ``teacher_cache_max_gb``; the choice and its reason are logged at INFO level.

    Args:
        cache: The model's cache.
        teacher: The frozen teacher (run once on one image to size the estimate).
        train_data: The datamodule's training dataset, ``None`` without a datamodule.
        transform: The pre-processor's transform, ``None`` without one.
        device: Where the model is.
    """
    augmentations = getattr(train_data, "augmentations", None)
    cache.reset(fingerprint=f"{augmentations!r}|{transform!r}", expected_items=len(train_data or ()))
    if train_data is None:
        cache.disable(
            "the training data does not come from an anomalib datamodule, so its transforms cannot be checked"
            + ("." if cache.auto else "; train with a datamodule or set teacher_cache='off'."),
        )
        return
    random_parts = non_deterministic_transforms(augmentations) + non_deterministic_transforms(transform)
    if random_parts:
        cache.disable(
            f"the training transforms include {', '.join(random_parts)}, which is random or not known to be "
            "deterministic, so the teacher's features change between epochs"
            + ("." if cache.auto else "; set teacher_cache='off' or remove the random training augmentations."),
        )
        return
    if not cache.auto:
        logger.info("Teacher-feature cache on (teacher_cache=%r).", cache.storage.value)
        return
    if len(train_data) == 0:
        cache.disable("the datamodule has no training images.")
        return
    per_image = _teacher_bytes_per_image(cache, teacher, train_data[0].image, transform, device)
    estimate_gb = len(train_data) * per_image / 1024**3
    limit_gb = cache.max_bytes / 1024**3
    if estimate_gb > limit_gb:
        cache.disable(
            f"the teacher's features of the {len(train_data)} training images would take an estimated "
            f"{estimate_gb:.2f} GB ({per_image / 1024**2:.2f} MB each), over teacher_cache_max_gb={limit_gb:.2f}; "
            "raise teacher_cache_max_gb, or set teacher_cache='memory' (caches the images that fit) or 'disk'.",
        )
        return
    logger.info(
        "Teacher-feature cache on in memory (teacher_cache='auto'): the training transforms are deterministic and "
        "the %d training images take an estimated %.2f GB (%.2f MB each), within teacher_cache_max_gb=%.2f.",
        len(train_data),
        estimate_gb,
        per_image / 1024**2,
        limit_gb,
    )


def _teacher_bytes_per_image(
    cache: TeacherFeatureCache,
    teacher: nn.Module,
    image: torch.Tensor,
    transform: Any,
    device: torch.device,
) -> int:
    """Bytes the cache would store per training image: the teacher run once on one pre-processed image.

    Run rather than computed from the backbone's strides, so that any backbone, padding or pre-processing size
    gives the true shapes; one image costs a few milliseconds at the start of fit.
    """
    images = image.unsqueeze(0).to(device)
    if transform is not None:
        images = transform(images)
    with torch.no_grad():
        return cache.bytes_per_item(teacher(images))


def cached_teacher_features(
    cache: TeacherFeatureCache,
    teacher: nn.Module,
    image_paths: Sequence[str] | None,
    images: torch.Tensor,
) -> dict[str, torch.Tensor] | None:
    """The teacher's pyramid of ``images``, from the cache where stored; ``None`` when the cache is off.

    Images missing from the cache are computed by the teacher and stored; every feature is returned as stored (so an
    epoch that computes it and one that reads it train on the same values).

    Args:
        cache: The model's cache.
        teacher: The frozen teacher.
        image_paths: The batch's image paths (the cache's keys); without them the cache is disabled.
        images: The batch's pre-processed images.
    """
    if not cache.enabled:
        return None
    if image_paths is None:
        cache.disable(
            "the training batches carry no image_path to key the cache by"
            + ("." if cache.auto else "; set teacher_cache='off'."),
        )
        return None
    size = "x".join(str(side) for side in images.shape[1:])
    keys = [f"{key}|{size}" for key in image_keys(image_paths)]
    slots = cache.get(keys)
    missing = [row for row, slot in enumerate(slots) if slot is None]
    if len(missing) == len(slots):
        features = teacher(images)
        cache.put(keys, features)
        return cache.as_stored(features)
    stored = [row for row, slot in enumerate(slots) if slot is not None]
    cached = cache.read([slots[row] for row in stored], device=images.device, dtype=torch.float32)
    if not missing:
        return cached
    computed = teacher(images[missing])
    cache.put([keys[row] for row in missing], computed)
    computed = cache.as_stored(computed)
    features = {}
    for level, values in cached.items():
        merged = values.new_empty((len(slots), *values.shape[1:]))
        merged[stored] = values
        merged[missing] = computed[level].float()
        features[level] = merged
    return features


def close_teacher_cache(cache: TeacherFeatureCache) -> None:
    """Log what the cache served in this fit and free it."""
    if not cache.enabled:
        return
    logger.info(
        "Teacher-feature cache: %d hits, %d misses, %d images stored (%.2f GB), %d not stored (cap).",
        cache.stats.hits,
        cache.stats.misses,
        cache.stored_items,
        cache.stored_bytes / 1024**3,
        cache.stats.overflow,
    )
    cache.close()
