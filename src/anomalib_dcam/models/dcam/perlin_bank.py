# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Fast synthetic defects: anomalib's Perlin defects drawn once into a bank, then reused per batch in torch.

anomalib's :class:`~anomalib.data.utils.generators.perlin.PerlinAnomalyGenerator` makes every defect from scratch, one
image at a time: a Perlin noise field, a random rotation, a threshold at 0.5 into the mask, and three random
photometric augmentations of the fill. :class:`PerlinDefectBank` runs exactly that code (anomalib's own
``generate_perturbation``, with its retry when a mask comes out empty) for ``size`` entries, once, from a fixed seed,
and then corrupts a whole batch with a handful of vectorised torch operations:

- per image, a Bernoulli(``probability``) draw decides whether it gets a defect (anomalib: ``rand > probability``
  means no defect, and that image's mask is all zeros);
- a defect is a uniformly chosen bank entry, under a uniformly chosen symmetry of the square (flips, and for square
  images transposes: 8 variants, 4 for non-square images). These leave each mask's coverage unchanged and map
  anomalib's rotation range (-90, 90) and its independent x/y noise scales onto themselves, so the shapes keep
  anomalib's distribution; rolls or crops would cut the defects along straight seams that anomalib never makes;
- the opacity ``beta`` is uniform in ``blend``, and the blend is anomalib's own:
  ``image * (1 - mask) + beta * fill * mask + (1 - beta) * image * mask``; outside the mask the output *is* the input.

With Perlin-noise fill the fill is the same noise field as the mask (anomalib colours the defect with the noise that
shaped it), so mask and fill are stored and transformed together. With a texture folder (``source``) anomalib draws
the fill independently of the mask, so the bank holds ``size`` masks and ``size`` texture fills (each a random file
of the folder, resized and augmented as anomalib does) and pairs them independently: ``size**2 * 64`` combinations.
A bank sees only ``size`` of the folder's files; the reference generator (``synthetic_anomaly_generator="anomalib"``)
reads a fresh file for every defect.

Every draw of a batch comes from a :class:`torch.Generator` seeded with the batch's seed, on the CPU (so the same seed
gives the same defects on any device), and the bank itself is built from its own fixed seed: the global RNG is never
touched, and a run resumed from a checkpoint rebuilds the same bank and draws the same defects.

Example:
    >>> import torch
    >>> bank = PerlinDefectBank(probability=1.0, size=8)
    >>> corrupted, masks = bank(torch.rand(2, 3, 32, 32), seed=0)
    >>> masks.shape
    torch.Size([2, 1, 32, 32])
"""

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
from torchvision import io
from torchvision.transforms import v2

from anomalib_dcam._validation import check_unit_interval

__all__ = ["PerlinDefectBank"]

logger = logging.getLogger(__name__)

# anomalib retries an empty mask up to 10 times (``PerlinAnomalyGenerator._transform_image``); so does the bank.
MASK_RETRIES = 10


def _dihedral(tensor: torch.Tensor, code: int) -> torch.Tensor:
    """One of the 8 symmetries of the square on the last two dimensions: bit 0 flips W, bit 1 flips H, bit 2 transposes.

    Args:
        tensor: Tensor ``(..., H, W)``; must be square when ``code`` has bit 2 set.
        code: Symmetry in ``[0, 8)``; ``0`` is the identity.

    Returns:
        The transformed tensor.
    """
    dims = [dim for bit, dim in ((1, -1), (2, -2)) if code & bit]
    if dims:
        tensor = tensor.flip(dims)
    if code & 4:
        tensor = tensor.transpose(-1, -2)
    return tensor


class PerlinDefectBank:
    """Batch-vectorised synthetic defects with the statistics of anomalib's ``PerlinAnomalyGenerator``.

    The bank is built lazily, on the first batch of each image size, on the CPU from ``bank_seed`` (so that it is the
    same on every device and in every run) and moved to the batch's device. Entries are stored in float16 (the fill
    differs from anomalib's float32 by less than 1e-3 relative; masks are exact): at 256 px and ``size=128`` that is
    64 MB (16 MB of masks, 48 MB of fills), with either fill.

    Args:
        probability: Chance that an image gets a defect, in ``[0, 1]``.
        blend: ``(low, high)`` range of the defect's opacity, drawn uniformly per image.
        source: Folder of texture images to fill the defects from; ``None`` fills them with Perlin noise.
        size: Number of bank entries (masks, and texture fills with ``source``). Defaults to ``128``.
        bank_seed: Seed of the bank's construction. Defaults to ``0``.

    Raises:
        ValueError: If ``size`` is not a positive integer, ``probability`` is outside ``[0, 1]`` or ``blend`` is not
            ``(low, high)`` with ``0 <= low <= high``.
    """

    def __init__(
        self,
        probability: float,
        blend: Sequence[float] = (0.2, 1.0),
        source: str | Path | None = None,
        size: int = 128,
        bank_seed: int = 0,
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            msg = f"size={size!r} is not accepted; the bank needs a positive integer number of entries."
            raise ValueError(msg)
        probability = check_unit_interval(probability, "probability")
        low, high = (float(value) for value in blend)
        if not 0.0 <= low <= high:
            msg = f"blend={tuple(blend)!r} is not accepted; it must be (low, high) with 0 <= low <= high."
            raise ValueError(msg)
        self.probability = float(probability)
        self.blend = (low, high)
        self.source = source
        self.size = size
        self.bank_seed = bank_seed
        # (height, width) -> (masks (N, 1, H, W), fills (M, 3, H, W)), float16. Without a source the fills are the
        # Perlin fills of the masks themselves (M = N, paired by index); with a source they are paired at random.
        self._banks: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def entries(self, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The bank's masks ``(N, 1, H, W)`` and fills ``(M, 3, H, W)`` (float16) at one image size, built on demand.

        Args:
            height: Image height.
            width: Image width.
            device: Device to hold the bank on.

        Returns:
            Masks (0 or 1) and fills (the colour a defect takes at full opacity; Perlin fills are 0 outside their mask).
        """
        key = (height, width)
        if key not in self._banks:
            self._banks[key] = self._build(height, width)
        masks, fills = self._banks[key]
        if masks.device != device:
            masks, fills = masks.to(device), fills.to(device)
            self._banks[key] = (masks, fills)
        return masks, fills

    def _build(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw the bank with anomalib's own functions, from ``bank_seed``, without touching the global RNG."""
        start = time.perf_counter()
        cpu = torch.device("cpu")
        # anomalib's generator draws from the global RNG (noise, rotation, augmentations, even its constructor's
        # solarize threshold): fork it, so that building the bank changes no other random draw of the run.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.bank_seed)
            reference = PerlinAnomalyGenerator(
                anomaly_source_path=self.source, probability=1.0, blend_factor=self.blend
            )
            masks = torch.empty((self.size, 1, height, width), dtype=torch.float16)
            perlin_fills = torch.empty((self.size, 3, height, width), dtype=torch.float16)
            for index in range(self.size):
                perturbation, mask = reference.generate_perturbation(height, width, cpu)
                for _ in range(MASK_RETRIES):
                    if mask.max() > 0:
                        break
                    perturbation, mask = reference.generate_perturbation(height, width, cpu)
                masks[index] = mask.permute(2, 0, 1)
                perlin_fills[index] = perturbation.permute(2, 0, 1)
            fills = perlin_fills if self.source is None else self._texture_fills(reference, height, width)
        megabytes = (masks.numel() + fills.numel()) * masks.element_size() / 1024**2
        logger.info(
            "Synthetic-defect bank: %d Perlin masks%s at %dx%d built in %.1f s (%.0f MB).",
            self.size,
            "" if self.source is None else f" and {len(fills)} texture fills from {self.source}",
            height,
            width,
            time.perf_counter() - start,
            megabytes,
        )
        return masks, fills

    def _texture_fills(self, reference: PerlinAnomalyGenerator, height: int, width: int) -> torch.Tensor:
        """Texture fills as anomalib makes them (``generate_perturbation`` with a source path), unmasked.

        anomalib only exposes the fill already multiplied by its mask, so its few lines are repeated here: a random
        file of the folder, read as RGB in [0, 1], resized (antialiased) to the image size, then its augmenters.
        """
        # Sorted: anomalib lists the folder in file-system order, which need not be the same on another machine.
        paths = sorted(reference.anomaly_source_paths)
        if not paths:
            msg = f"synthetic_anomaly_source={str(self.source)!r} holds no images to fill the defects from."
            raise ValueError(msg)
        fills = torch.empty((self.size, 3, height, width), dtype=torch.float16)
        for index in range(self.size):
            path = paths[int(torch.randint(len(paths), (1,)).item())]
            texture = io.read_image(str(path), mode=io.ImageReadMode.RGB).float() / 255.0
            if texture.shape[-2:] != (height, width):
                texture = v2.functional.resize(texture, [height, width], antialias=True)
            fills[index] = reference.augmenters(texture)
        return fills

    def __call__(self, images: torch.Tensor, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Corrupt a batch of images in pixel space.

        Args:
            images: Images ``(B, 3, H, W)`` with values in ``[0, 1]``.
            seed: Seed of this batch's draws; ``None`` draws them from the global RNG.

        Returns:
            The corrupted images (equal to ``images`` outside the masks, bit for bit) and the masks ``(B, 1, H, W)``
            in the images' dtype: 1 inside a defect, all 0 for an image without one.

        Raises:
            ValueError: If the images are not a batch of 3-channel images (the fills are RGB).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            msg = f"The defect bank corrupts batches of RGB images (B, 3, H, W); got shape {tuple(images.shape)}."
            raise ValueError(msg)
        batch, _, height, width = images.shape
        masks_bank, fills_bank = self.entries(height, width, images.device)
        # All draws on the CPU, from the batch's own generator: device-independent, global RNG untouched. Every image
        # draws all of its numbers whether or not it gets a defect, so one image's draw never shifts another's.
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        symmetries = 8 if height == width else 4
        defective = torch.rand(batch, generator=generator) < self.probability
        mask_index = torch.randint(len(masks_bank), (batch,), generator=generator)
        mask_symmetry = torch.randint(symmetries, (batch,), generator=generator)
        beta = self.blend[0] + (self.blend[1] - self.blend[0]) * torch.rand(batch, generator=generator)
        fill_index, fill_symmetry = mask_index, mask_symmetry  # Perlin fill: the mask's own noise, moved with it
        if self.source is not None:
            fill_index = torch.randint(len(fills_bank), (batch,), generator=generator)
            fill_symmetry = torch.randint(symmetries, (batch,), generator=generator)

        masks = torch.zeros((batch, 1, height, width), dtype=images.dtype, device=images.device)
        corrupted = images.clone()
        rows = defective.nonzero().flatten()
        if rows.numel() == 0:
            return corrupted, masks
        mask = self._gather(masks_bank, mask_index[rows], mask_symmetry[rows]).to(images.dtype)
        fill = self._gather(fills_bank, fill_index[rows], fill_symmetry[rows]).to(images.dtype)
        clean = images[rows.to(images.device)]
        opacity = beta[rows].to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)
        # anomalib's blend, term for term (``_transform_image``), so the values inside the mask are the reference's.
        perturbation = fill * mask
        blended = clean * (1 - mask) + opacity * perturbation + (1 - opacity) * clean * mask
        device_rows = rows.to(images.device)
        corrupted[device_rows] = torch.where(mask > 0, blended, clean)
        masks[device_rows] = mask
        return corrupted, masks

    @staticmethod
    def _gather(bank: torch.Tensor, index: torch.Tensor, symmetry: torch.Tensor) -> torch.Tensor:
        """Bank entries ``index`` under symmetries ``symmetry``, as float32 on the bank's device.

        One group per symmetry (at most 8), so every entry is copied once instead of computing every variant for
        every image.
        """
        out = torch.empty((len(index), *bank.shape[1:]), dtype=torch.float32, device=bank.device)
        for code in symmetry.unique().tolist():
            selected = (symmetry == code).nonzero().flatten()
            entries = bank[index[selected].to(bank.device)].float()
            out[selected.to(bank.device)] = _dihedral(entries, code)
        return out
