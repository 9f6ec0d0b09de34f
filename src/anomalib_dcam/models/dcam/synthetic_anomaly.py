# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Synthetic defects for denoising distillation: the student sees a corrupted image, the teacher the clean one.

DMDD and DeSTSeg train the student to give, for an image with a synthetic defect, the teacher's features of the
*clean* image: the student learns to "denoise" anomalies away, which widens the teacher-student gap on real defects.
:class:`SyntheticAnomalyStep` makes those inputs with anomalib's
:class:`~anomalib.data.utils.generators.perlin.PerlinAnomalyGenerator` (DRAEM's Perlin-mask defects, filled with
Perlin noise or with images from a texture folder).

The training batch arrives normalised by the pre-processor. The generator blends in pixel space, on images in
[0, 1]: feeding it normalised values would mix value ranges (the bug fixed in anomalib PR #1431). So the step
undoes the pre-processor's ``Normalize``, corrupts the pixels, and normalises the corrupted pixels with that same
``Normalize``. Outside the defect mask the student's input is the clean normalised tensor itself, bit for bit.
"""

from collections.abc import Sequence
from pathlib import Path

import torch
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

__all__ = ["SyntheticAnomalyStep", "find_normalize"]


def find_normalize(transform: object) -> v2.Normalize | None:
    """The ``Normalize`` of a pre-processing transform, ``None`` if it has none.

    Raises:
        ValueError: If the transform normalises more than once (the pixel values could not be recovered).
    """
    if isinstance(transform, v2.Normalize):
        return transform
    if not isinstance(transform, v2.Compose):
        return None
    found = [normalize for part in transform.transforms if (normalize := find_normalize(part)) is not None]
    if len(found) > 1:
        msg = (
            "synthetic_anomaly_probability > 0 needs a pre-processor with at most one Normalize, so that the "
            f"defects can be made in pixel space; found {len(found)} in {transform!r}."
        )
        raise ValueError(msg)
    return found[0] if found else None


class SyntheticAnomalyStep:
    """Corrupt normalised training images with synthetic defects made in pixel space.

    Args:
        probability: Chance that an image gets a defect, in ``[0, 1]``.
        blend: ``(low, high)`` range of the defect's opacity (anomalib's ``blend_factor``), ``0 < low <= high <= 1``.
        source: Folder of texture images to fill the defects from (as DRAEM's ``anomaly_source_path``); ``None`` fills
            them with Perlin noise.

    Raises:
        ValueError: If an option is outside its accepted values; the message names the Dcam option.
    """

    def __init__(
        self,
        probability: float,
        blend: Sequence[float] = (0.2, 1.0),
        source: str | Path | None = None,
    ) -> None:
        blend = tuple(float(value) for value in blend) if isinstance(blend, Sequence) else ()
        if len(blend) != 2 or not 0.0 < blend[0] <= blend[1] <= 1.0:
            msg = (
                f"synthetic_anomaly_blend={blend!r} is not accepted; it must be [low, high] with 0 < low <= high <= 1."
            )
            raise ValueError(msg)
        if source is not None:
            folder = Path(source)
            if not folder.is_dir() or not any(path.suffix.lower() in IMG_EXTENSIONS for path in folder.rglob("*")):
                msg = (
                    f"synthetic_anomaly_source={str(source)!r} is not a folder of images "
                    f"({', '.join(IMG_EXTENSIONS)}); pass a folder of texture images (e.g. DTD) or None for Perlin "
                    "noise."
                )
                raise ValueError(msg)
        self.probability = probability
        self.blend = blend
        self.source = source
        self._generator: PerlinAnomalyGenerator | None = None

    @property
    def generator(self) -> PerlinAnomalyGenerator:
        """The Perlin generator of anomalib, built on first use.

        Building it draws random numbers, which must not shift the student's initialisation: a model with and
        without synthetic defects starts from the same weights.
        """
        if self._generator is None:
            self._generator = PerlinAnomalyGenerator(
                anomaly_source_path=self.source,
                probability=self.probability,
                blend_factor=self.blend,
            )
        return self._generator

    def __call__(self, images: torch.Tensor, normalize: v2.Normalize | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the student's inputs and the defect masks.

        Args:
            images: Normalised images ``(B, C, H, W)``, as the pre-processor made them.
            normalize: The pre-processor's ``Normalize`` (``None`` when it does not normalise).

        Returns:
            The corrupted images, normalised like ``images``, and the masks ``(B, 1, H, W)`` (1 inside a defect).
        """
        with torch.no_grad():
            pixels = images
            if normalize is not None:
                mean = torch.as_tensor(normalize.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
                std = torch.as_tensor(normalize.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
                pixels = (images * std + mean).clamp(0.0, 1.0)
            corrupted, masks = self.generator(pixels)
            if normalize is not None:
                corrupted = normalize(corrupted)
            masks = masks.to(images.dtype)
            return torch.where(masks > 0, corrupted.to(images.dtype), images), masks
