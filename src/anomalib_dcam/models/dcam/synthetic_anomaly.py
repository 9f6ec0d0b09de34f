# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Synthetic defects for denoising distillation: the student sees a corrupted image, the teacher the clean one.

DMDD and DeSTSeg train the student to give, for an image with a synthetic defect, the teacher's features of the
*clean* image: the student learns to "denoise" anomalies away, which widens the teacher-student gap on real defects.
:class:`SyntheticAnomalyStep` makes those inputs with DRAEM's Perlin-mask defects, filled with Perlin noise or with
images from a texture folder, as anomalib's :class:`~anomalib.data.utils.generators.perlin.PerlinAnomalyGenerator`
makes them. By default (``generator="bank"``) they come from a :class:`~.perlin_bank.PerlinDefectBank`: a bank of
defects drawn once with anomalib's own functions and reused per batch in a few vectorised torch operations;
``generator="anomalib"`` calls anomalib's generator on every image of every batch (the reference, slower).

The training batch arrives normalised by the pre-processor. The generator blends in pixel space, on images in
[0, 1]: feeding it normalised values would mix value ranges (the bug fixed in anomalib PR #1431). So the step
undoes the pre-processor's ``Normalize``, corrupts the pixels, and normalises the corrupted pixels with that same
``Normalize``. Outside the defect mask the student's input is the clean normalised tensor itself, bit for bit.

The defects of a batch are drawn from their own seed, :func:`defect_seed` of the run's seed, the epoch, the batch
index and the process rank, and leave the global RNG untouched: a run resumed from a checkpoint draws the same defects
as the uninterrupted run, and turning the defects on or off does not shift any other random draw.
"""

import contextlib
from collections.abc import Iterator, Sequence
from enum import Enum
from pathlib import Path

import numpy as np
import torch
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from anomalib_dcam._validation import coerce_choice

from .perlin_bank import PerlinDefectBank

__all__ = ["DefectGenerator", "SyntheticAnomalyStep", "defect_seed", "find_normalize"]


class DefectGenerator(str, Enum):
    """What draws the synthetic defects: a bank of anomalib's Perlin defects (fast) or anomalib's generator itself."""

    BANK = "bank"
    ANOMALIB = "anomalib"


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


def defect_seed(run_seed: int, epoch: int, batch_index: int, rank: int = 0) -> int:
    """The seed of one batch's defects: a well-mixed function of where the batch is in the run.

    Args:
        run_seed: The run's seed (``torch.initial_seed()`` after Lightning's ``seed_everything``).
        epoch: Training epoch.
        batch_index: Batch index within the epoch.
        rank: Process rank, so that the processes of a distributed run draw different defects.

    Returns:
        A seed for ``torch.manual_seed``.
    """
    entropy = [int(value) % 2**64 for value in (run_seed, epoch, batch_index, rank)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)


@contextlib.contextmanager
def _seeded_rng(seed: int | None, device: torch.device) -> Iterator[None]:
    """Draw from ``seed`` inside the block and restore the global RNG after it; no-op for ``seed=None``."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class SyntheticAnomalyStep:
    """Corrupt normalised training images with synthetic defects made in pixel space.

    Args:
        probability: Chance that an image gets a defect, in ``[0, 1]``.
        blend: ``(low, high)`` range of the defect's opacity (anomalib's ``blend_factor``), ``0 < low <= high <= 1``.
        source: Folder of texture images to fill the defects from (as DRAEM's ``anomaly_source_path``); ``None`` fills
            them with Perlin noise.
        generator: ``"bank"`` (default): :class:`~.perlin_bank.PerlinDefectBank`, anomalib's defects drawn once into a
            bank and reused per batch, vectorised; with a texture folder it fills from ``bank_size`` of its files.
            ``"anomalib"``: anomalib's ``PerlinAnomalyGenerator`` on every image (fresh defects and files, slower).
        bank_size: Entries of the bank (``generator="bank"`` only). Defaults to ``128``.

    Raises:
        ValueError: If an option is outside its accepted values; the message names the Dcam option.
    """

    def __init__(
        self,
        probability: float,
        blend: Sequence[float] = (0.2, 1.0),
        source: str | Path | None = None,
        generator: DefectGenerator | str = DefectGenerator.BANK,
        bank_size: int = 128,
    ) -> None:
        self.kind = coerce_choice(generator, DefectGenerator, "synthetic_anomaly_generator")
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
        self.bank = PerlinDefectBank(probability, blend=blend, source=source, size=bank_size)

    @property
    def generator(self) -> PerlinAnomalyGenerator:
        """The Perlin generator of anomalib (``generator="anomalib"``), built on first use.

        Building it draws random numbers (its solarize threshold). They come from a fixed seed of their own: the
        generator is the same in every run, a resumed one included, and the global RNG is untouched, so a model with
        and without synthetic defects starts from the same weights.
        """
        if self._generator is None:
            with _seeded_rng(0, torch.device("cpu")):
                self._generator = PerlinAnomalyGenerator(
                    anomaly_source_path=self.source,
                    probability=self.probability,
                    blend_factor=self.blend,
                )
        return self._generator

    def __call__(
        self,
        images: torch.Tensor,
        normalize: v2.Normalize | None,
        seed: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the student's inputs and the defect masks.

        Args:
            images: Normalised images ``(B, C, H, W)``, as the pre-processor made them.
            normalize: The pre-processor's ``Normalize`` (``None`` when it does not normalise).
            seed: Seed of the defects (:func:`defect_seed`), drawn without touching the global RNG; ``None`` draws
                them from the global RNG.

        Returns:
            The corrupted images, normalised like ``images``, and the masks ``(B, 1, H, W)`` (1 inside a defect).
        """
        # The bank draws from a generator of its own; anomalib's generator draws from the global RNG, forked here.
        seeded = _seeded_rng(seed, images.device) if self.kind == DefectGenerator.ANOMALIB else contextlib.nullcontext()
        with torch.no_grad(), seeded:
            pixels = images
            if normalize is not None:
                mean = torch.as_tensor(normalize.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
                std = torch.as_tensor(normalize.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
                pixels = (images * std + mean).clamp(0.0, 1.0)
            if self.kind == DefectGenerator.BANK:
                corrupted, masks = self.bank(pixels, seed=seed)
            else:
                corrupted, masks = self.generator(pixels)
            if normalize is not None:
                corrupted = normalize(corrupted)
            masks = masks.to(images.dtype)
            return torch.where(masks > 0, corrupted.to(images.dtype), images), masks
