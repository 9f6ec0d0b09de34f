# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""DcamLoss on constructed inputs."""

import math

import pytest
import torch
from anomalib.models.image.stfpm.loss import STFPMLoss

from anomalib_dcam.models.dcam.loss import (
    DcamLoss,
    channel_cosine_distance,
    pixel_cosine_distance,
    spatial_kl_divergence,
)


def _features(batch: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "layer1": torch.randn(batch, 8, 6, 6, generator=generator),
        "layer2": torch.randn(batch, 16, 3, 3, generator=generator),
    }


def test_identical_features_give_zero_for_every_term() -> None:
    features = _features()
    output = DcamLoss(pixel_weight=1, channel_weight=1, kd_weight=1)(features, features)
    for term in (output.total, output.pixel, output.channel, output.kd):
        assert term.item() == pytest.approx(0.0, abs=1e-5)


def test_kl_is_non_negative_and_positive_for_different_maps() -> None:
    teacher, student = _features(seed=1), _features(seed=2)
    for temperature in (0.5, 1.0, 4.0):
        divergence = spatial_kl_divergence(teacher["layer1"], student["layer1"], temperature)
        assert divergence.shape == (3, 8)
        assert torch.all(divergence >= -1e-6)
        assert divergence.sum() > 0


def test_hand_computed_values() -> None:
    # Two channels over two positions; image 0 only.
    teacher = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # channel 0 = (1, 0), channel 1 = (0, 1)
    student = torch.tensor([[[[1.0, 1.0]], [[0.0, 1.0]]]])  # channel 0 = (1, 1), channel 1 = (0, 1)
    # Channel CD: channel 0 has cos = 1/sqrt(2), channel 1 has cos = 1.
    assert channel_cosine_distance(teacher, student)[0].tolist() == pytest.approx([1 - 1 / math.sqrt(2), 0.0])
    # Pixel CD: position 0 vectors (1, 0) vs (1, 0) -> 0; position 1 vectors (0, 1) vs (1, 1) -> 1 - 1/sqrt(2).
    assert pixel_cosine_distance(teacher, student).item() == pytest.approx((1 - 1 / math.sqrt(2)) / 2)
    # KD at T=1, channel 0: p_t = softmax(1, 0), p_s = softmax(1, 1) = (0.5, 0.5).
    p_t = torch.softmax(torch.tensor([1.0, 0.0]), dim=0)
    expected = float((p_t * (p_t.log() - math.log(0.5))).sum())
    assert spatial_kl_divergence(teacher, student, 1.0)[0, 0].item() == pytest.approx(expected, rel=1e-5)


def test_weights_scale_the_terms() -> None:
    teacher, student = _features(seed=1), _features(seed=2)
    base = DcamLoss(pixel_weight=1, channel_weight=1, kd_weight=1)(teacher, student)
    weighted = DcamLoss(pixel_weight=2, channel_weight=0.5, kd_weight=3)(teacher, student)
    # The unweighted terms do not depend on the weights; the total is their weighted sum.
    for name in ("pixel", "channel", "kd"):
        assert getattr(weighted, name).item() == pytest.approx(getattr(base, name).item(), rel=1e-6)
    expected = 2 * base.pixel + 0.5 * base.channel + 3 * base.kd
    assert weighted.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert base.total.item() == pytest.approx((base.pixel + base.channel + base.kd).item(), rel=1e-6)


def test_zero_weight_switches_a_term_off() -> None:
    teacher, student = _features(seed=1), _features(seed=2)
    output = DcamLoss(pixel_weight=0, channel_weight=1, kd_weight=0)(teacher, student)
    assert output.pixel is None
    assert output.kd is None
    assert output.total.item() == pytest.approx(output.channel.item())


def test_reductions() -> None:
    teacher, student = _features(seed=1), _features(seed=2)
    terms = {"channel_weight": 1.0, "kd_weight": 1.0}
    summed = DcamLoss(**terms, kd_reduction="sum", batch_reduction="sum")(teacher, student)
    averaged = DcamLoss(**terms, kd_reduction="mean", batch_reduction="mean")(teacher, student)
    # Summing over the batch multiplies every term by the batch size (3).
    assert summed.pixel.item() == pytest.approx(3 * averaged.pixel.item(), rel=1e-6)
    assert summed.channel.item() == pytest.approx(3 * averaged.channel.item(), rel=1e-6)
    # Summing KD over channels multiplies each level by its channel count.
    expected_kd = sum(
        spatial_kl_divergence(teacher[level], student[level], 1.0).sum().item() for level in ("layer1", "layer2")
    )
    assert summed.kd.item() == pytest.approx(expected_kd, rel=1e-5)


def test_pixel_term_equals_anomalib_stfpm_loss() -> None:
    teacher, student = _features(seed=3), _features(seed=4)
    dcam = DcamLoss(pixel_weight=1, channel_weight=0, kd_weight=0, batch_reduction="sum")(teacher, student)
    assert dcam.total.item() == pytest.approx(STFPMLoss()(teacher, student).item(), rel=1e-6)


def test_channel_term_ignores_a_channel_mask_but_pixel_term_does_not() -> None:
    # The scale-invariance property that decides where a channel attention can act (docs/method.md).
    teacher, student = _features(seed=5), _features(seed=6)
    mask = {level: torch.rand(1, value.shape[1], 1, 1) + 0.1 for level, value in student.items()}
    masked = {level: value * mask[level] for level, value in student.items()}
    loss = DcamLoss(channel_weight=1.0, kd_weight=1.0)
    plain, with_mask = loss(teacher, student), loss(teacher, masked)
    assert with_mask.channel.item() == pytest.approx(plain.channel.item(), rel=1e-5)
    assert with_mask.pixel.item() != pytest.approx(plain.pixel.item(), rel=1e-3)
    assert with_mask.kd.item() != pytest.approx(plain.kd.item(), rel=1e-3)


def test_gradients_reach_the_student_only() -> None:
    teacher, student = _features(seed=1), _features(seed=2)
    student = {level: value.requires_grad_() for level, value in student.items()}
    DcamLoss(channel_weight=1.0, kd_weight=1.0)(teacher, student).total.backward()
    assert all(value.grad is not None and value.grad.abs().sum() > 0 for value in student.values())


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"pixel_weight": -1.0}, "pixel_weight"),
        ({"channel_weight": -0.1}, "channel_weight"),
        ({"kd_weight": float("nan")}, "kd_weight"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -2.0}, "temperature"),
        ({"kd_reduction": "median"}, "kd_reduction"),
        ({"batch_reduction": "max"}, "batch_reduction"),
        ({"pixel_weight": 0, "channel_weight": 0, "kd_weight": 0}, "pixel_weight"),
    ],
)
def test_bad_options_name_the_option(kwargs: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        DcamLoss(**kwargs)


def test_unknown_reduction_lists_accepted_values() -> None:
    with pytest.raises(ValueError, match="'mean', 'sum'"):
        DcamLoss(kd_reduction="median")
