# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""The fast synthetic-defect bank against anomalib's PerlinAnomalyGenerator: statistics, seeding, exactness."""

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
from PIL import Image

from anomalib_dcam import Dcam
from anomalib_dcam.models.dcam.perlin_bank import PerlinDefectBank
from anomalib_dcam.models.dcam.synthetic_anomaly import DefectGenerator, SyntheticAnomalyStep, defect_seed

SIZE = 64
BLEND = (0.2, 1.0)
Corrupt = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def _ks(first: torch.Tensor, second: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    first, second = first.sort().values, second.sort().values
    grid = torch.cat([first, second])
    cdf_first = torch.searchsorted(first, grid, right=True) / len(first)
    cdf_second = torch.searchsorted(second, grid, right=True) / len(second)
    return float((cdf_first - cdf_second).abs().max())


def _draw(corrupt: Corrupt, images: int, batch: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mask coverage (fraction of pixels inside the defect) and, for images with a defect, the opacity.

    Each batch is corrupted twice with the same seed, once on black and once on white images: inside the mask the
    output is ``beta * fill + (1 - beta) * image``, so the difference of the two is ``1 - beta`` whatever the fill.
    """
    coverage, opacity = [], []
    for index in range(images // batch):
        black, black_masks = corrupt(torch.zeros(batch, 3, SIZE, SIZE), index)
        white, white_masks = corrupt(torch.ones(batch, 3, SIZE, SIZE), index)
        assert torch.equal(black_masks, white_masks)
        assert bool(((black_masks == 0) | (black_masks == 1)).all())  # binary masks, as anomalib's
        fraction = black_masks.flatten(1).mean(dim=1)
        coverage.append(fraction)
        for row in fraction.nonzero().flatten().tolist():
            inside = black_masks[row].expand_as(black[row]) > 0
            opacity.append(1 - (white[row][inside] - black[row][inside]).mean())
    return torch.cat(coverage), torch.stack(opacity)


def _anomalib(images: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.random.fork_rng():
        torch.manual_seed(1000 + index)
        return PerlinAnomalyGenerator(probability=0.5, blend_factor=BLEND)(images)


def test_the_bank_draws_anomalib_s_defect_statistics() -> None:
    """2,000 images at 64 px, p = 0.5, opacity in [0.2, 1]: the default bank (128 entries) against anomalib.

    Tolerances: fraction of images with a defect within 0.05 (each is Binomial(2000, 0.5), so about 3 standard
    deviations of the difference); among images with a defect, mask coverage with a two-sample KS statistic below 0.15
    and mean and quartiles within 20 % (relative): the bank holds 128 of anomalib's masks, and a 128-sample empirical
    distribution is typically 0.08 and rarely more than 0.14 (KS) from its parent (measured: 0.10, mean 4.9 % against
    4.7 %; a 2048-entry bank gives 0.02, so the gap is the bank's finite size, not a bias); opacity with KS below 0.087
    (the two-sample critical value at alpha = 0.001 for about 1,000 images each) and mean within 0.03.
    """
    bank = PerlinDefectBank(0.5, BLEND)
    threads = torch.get_num_threads()
    # Thousands of tiny per-image operations: one thread runs them in about 5 s, while several threads that share
    # busy cores with another process spin-wait on each other and take ten times as long.
    torch.set_num_threads(1)
    try:
        reference_coverage, reference_opacity = _draw(_anomalib, 2000)
        coverage, opacity = _draw(lambda images, index: bank(images, seed=1000 + index), 2000)
    finally:
        torch.set_num_threads(threads)

    reference_has, has = reference_coverage > 0, coverage > 0
    assert abs(has.float().mean() - reference_has.float().mean()) < 0.05
    assert abs(has.float().mean() - 0.5) < 0.05
    assert _ks(coverage[has], reference_coverage[reference_has]) < 0.15
    quantiles = torch.tensor([0.25, 0.5, 0.75])
    for ours, theirs in (
        (coverage[has].mean(), reference_coverage[reference_has].mean()),
        *zip(coverage[has].quantile(quantiles), reference_coverage[reference_has].quantile(quantiles), strict=True),
    ):
        assert abs(ours / theirs - 1) < 0.2, (float(ours), float(theirs))
    assert _ks(opacity, reference_opacity) < 0.087
    assert abs(opacity.mean() - reference_opacity.mean()) < 0.03
    assert BLEND[0] - 1e-4 <= float(opacity.min())
    assert float(opacity.max()) <= BLEND[1] + 1e-4


def test_same_seed_same_defects_other_seed_other_defects_global_rng_untouched() -> None:
    images = torch.rand(8, 3, SIZE, SIZE)
    bank = PerlinDefectBank(0.5, BLEND, size=16)
    state = torch.get_rng_state()
    first, first_masks = bank(images, seed=5)  # builds the bank: that must not draw from the global RNG either
    second, second_masks = bank(images, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, second)
    assert torch.equal(first_masks, second_masks)
    other, other_masks = bank(images, seed=6)
    assert not torch.equal(other_masks, first_masks)
    assert not torch.equal(other, first)
    # A bank built anew (a resumed run) from the same bank seed draws the same defects.
    rebuilt, rebuilt_masks = PerlinDefectBank(0.5, BLEND, size=16)(images, seed=5)
    assert torch.equal(rebuilt, first)
    assert torch.equal(rebuilt_masks, first_masks)


def test_the_step_with_the_bank_repeats_and_leaves_the_global_rng_alone() -> None:
    step = SyntheticAnomalyStep(0.5)
    assert step.kind == DefectGenerator.BANK
    images = torch.randn(8, 3, SIZE, SIZE)
    normalize = Dcam.configure_pre_processor(image_size=(SIZE, SIZE)).transform.transforms[-1]
    seed = defect_seed(0, epoch=1, batch_index=3)
    torch.manual_seed(11)
    state = torch.get_rng_state()
    first = step(images, normalize, seed=seed)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(99)
    second = step(images, normalize, seed=seed)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("shape", [(SIZE, SIZE), (48, SIZE)])
def test_outside_the_masks_the_output_is_the_input(shape: tuple[int, int]) -> None:
    images = torch.rand(16, 3, *shape)
    corrupted, masks = PerlinDefectBank(1.0, BLEND, size=16)(images, seed=0)
    assert masks.shape == (16, 1, *shape)
    outside = masks.expand_as(images) == 0
    assert torch.equal(corrupted[outside], images[outside])
    assert bool((masks.flatten(1).sum(dim=1) > 0).all())  # probability 1: every image has a defect
    assert (corrupted[~outside] != images[~outside]).float().mean() > 0.9


def test_probability_zero_changes_nothing() -> None:
    images = torch.rand(4, 3, SIZE, SIZE)
    corrupted, masks = PerlinDefectBank(0.0, BLEND, size=4)(images, seed=0)
    assert torch.equal(corrupted, images)
    assert not bool(masks.any())


def test_the_step_gives_the_bank_pixels_and_keeps_the_normalised_input_outside_the_masks() -> None:
    model = Dcam(pre_trained=False, pre_processor=Dcam.configure_pre_processor(image_size=(SIZE, SIZE)))
    step = model.synthetic_anomalies
    assert step.kind == DefectGenerator.BANK
    pixels = torch.rand(8, 3, SIZE, SIZE)
    images = model.pre_processor.transform(pixels)
    normalize = model.pre_processor.transform.transforms[-1]
    seen = []
    original = step.bank.__call__

    def recording_bank(values: torch.Tensor, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append((float(values.min()), float(values.max())))
        return original(values, seed=seed)

    step.bank = type("Recorder", (), {"__call__": staticmethod(recording_bank)})()
    student, masks = step(images, normalize, seed=3)
    (value_range,) = seen
    assert 0.0 <= value_range[0] <= value_range[1] <= 1.0  # the bank blends pixels, not normalised values
    outside = masks.expand_as(student) == 0
    assert torch.equal(student[outside], images[outside])
    corrupted_pixels, same_masks = original(pixels, seed=3)
    assert torch.equal(masks, same_masks)
    expected = model.pre_processor.transform(corrupted_pixels)
    torch.testing.assert_close(student[~outside], expected[~outside], rtol=0, atol=1e-5)


def test_a_texture_folder_fills_the_bank_s_defects(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"texture{index}.png")
    bank = PerlinDefectBank(1.0, (1.0, 1.0), source=tmp_path, size=8)
    images = torch.rand(6, 3, SIZE, SIZE)
    with caplog.at_level(logging.INFO, logger="anomalib_dcam"):
        corrupted, masks = bank(images, seed=0)
        bank(images, seed=1)
    built = [record for record in caplog.records if "Synthetic-defect bank" in record.message]
    assert len(built) == 1  # built once per image size, and said so
    assert "texture fills" in built[0].message
    inside = masks.expand_as(images) > 0
    assert bool(inside.any())
    assert torch.equal(corrupted[~inside], images[~inside])
    # Opacity 1: inside the mask the output is the texture fill alone, whatever the image was.
    again, _ = bank(torch.zeros_like(images), seed=0)
    assert torch.equal(again[inside], corrupted[inside])
    step = SyntheticAnomalyStep(1.0, source=tmp_path, bank_size=4)
    student, step_masks = step(images, None, seed=0)
    assert torch.equal(student[step_masks.expand_as(images) == 0], images[step_masks.expand_as(images) == 0])


def test_the_anomalib_generator_stays_available() -> None:
    model = Dcam(pre_trained=False, synthetic_anomaly_generator="anomalib", synthetic_anomaly_probability=1.0)
    step = model.synthetic_anomalies
    assert step.kind == DefectGenerator.ANOMALIB
    images = torch.rand(4, 3, SIZE, SIZE)
    state = torch.get_rng_state()
    corrupted, masks = step(images, None, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert bool((masks.flatten(1).sum(dim=1) > 0).all())
    with torch.random.fork_rng():
        torch.manual_seed(7)
        expected, expected_masks = step.generator(images)
    assert torch.equal(masks, expected_masks)
    assert torch.equal(corrupted, torch.where(masks > 0, expected, images))


@pytest.mark.parametrize("value", ["fast", "perlin", 3])
def test_a_bad_generator_names_the_option(value: object) -> None:
    with pytest.raises(ValueError, match=r"synthetic_anomaly_generator=.*'bank', 'anomalib'"):
        Dcam(pre_trained=False, synthetic_anomaly_generator=value)
    with pytest.raises(ValueError, match="synthetic_anomaly_generator"):
        SyntheticAnomalyStep(0.5, generator=value)
