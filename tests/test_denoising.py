# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Training-signal options: denoising distillation on synthetic defects, push-away term, hard-position distillation."""

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from PIL import Image
from torchvision.transforms import v2

from anomalib_dcam import Dcam
from anomalib_dcam.models.dcam import DCAM_PAPER_OPTIONS, DcamLoss
from anomalib_dcam.models.dcam.loss import (
    hard_pixel_cosine_distance,
    pixel_cosine_distance,
    push_away_distance,
)
from anomalib_dcam.models.dcam.synthetic_anomaly import SyntheticAnomalyStep, defect_seed, find_normalize

IMAGE_SIZE = 64
EVERY_OPTION = {
    **DCAM_PAPER_OPTIONS,  # DCAM's blocks and terms are off by default
    "synthetic_anomaly_probability": 0.5,
    "push_weight": 1.0,
    "hard_fraction": 0.25,
    "global_weight": 1.0,
}


def _small_dcam(**kwargs: object) -> Dcam:
    pre_processor = Dcam.configure_pre_processor(image_size=(IMAGE_SIZE, IMAGE_SIZE))
    return Dcam(**{"pre_trained": False, "pre_processor": pre_processor, **kwargs})


@pytest.fixture(scope="module")
def raw_batch(texture_root: Path):
    """A training batch as the data loader gives it: resized pixels in [0, 1], not yet normalised."""
    datamodule = MVTecAD(root=texture_root, category="brick", train_batch_size=8, num_workers=0)
    datamodule.setup()
    return next(iter(datamodule.train_dataloader()))


def _normalised(model: Dcam, raw_batch):
    batch = raw_batch.update(image=raw_batch.image.clone(), in_place=False)
    batch.image = model.pre_processor.transform(batch.image)
    return batch


def test_probability_zero_gives_todays_loss_bit_for_bit(raw_batch) -> None:
    torch.manual_seed(0)
    plain = _small_dcam(synthetic_anomaly_probability=0.0)  # the loss without denoising: what p = 0 must give
    torch.manual_seed(0)
    model = _small_dcam(synthetic_anomaly_probability=0.0, synthetic_anomaly_blend=(0.2, 0.9), hard_fraction=1.0)
    assert model.synthetic_anomalies is None
    batch = _normalised(model, raw_batch)
    model.model.train()
    plain.model.train()
    expected = plain.loss(*plain.model(batch.image)[:2]).total
    assert torch.equal(model.training_step(batch)["loss"], expected)


def test_synthetic_defects_do_not_change_the_initial_weights() -> None:
    # Ablation rows with and without defects start from the same student, so that their difference is the option's.
    torch.manual_seed(0)
    plain = _small_dcam().model.student_model.state_dict()
    torch.manual_seed(0)
    denoising = _small_dcam(synthetic_anomaly_probability=0.5, push_weight=1.0).model.student_model.state_dict()
    assert all(torch.equal(plain[name], denoising[name]) for name in plain)


def test_probability_one_changes_every_student_input_inside_its_mask_only(raw_batch) -> None:
    model = _small_dcam(synthetic_anomaly_probability=1.0)
    batch = _normalised(model, raw_batch)
    normalize = find_normalize(model.pre_processor.transform)
    student, masks = model.synthetic_anomalies(batch.image, normalize)
    assert masks.shape == (8, 1, IMAGE_SIZE, IMAGE_SIZE)
    inside = masks.expand_as(student) > 0
    assert bool((masks.flatten(1).sum(dim=1) > 0).all())  # every image has a defect
    assert torch.equal(student[~inside], batch.image[~inside])  # untouched outside, bit for bit
    assert (student[inside] != batch.image[inside]).float().mean() > 0.9


def test_defects_are_made_in_pixel_space_and_normalised_like_the_clean_image(raw_batch) -> None:
    # anomalib's generator (the reference path); tests/test_synthetic_defects.py checks the same for the default bank.
    model = _small_dcam(synthetic_anomaly_probability=1.0, synthetic_anomaly_generator="anomalib")
    batch = _normalised(model, raw_batch)
    normalize = find_normalize(model.pre_processor.transform)
    seen = []
    generator = model.synthetic_anomalies.generator
    original = generator.forward

    def recording_forward(images: torch.Tensor):
        seen.append((float(images.min()), float(images.max())))
        return original(images)

    generator.forward = recording_forward
    torch.manual_seed(3)
    student, masks = model.synthetic_anomalies(batch.image, normalize)
    (value_range,) = seen
    assert 0.0 <= value_range[0] <= value_range[1] <= 1.0  # the generator blends pixels, not normalised values

    torch.manual_seed(3)
    corrupted_pixels, same_masks = original(raw_batch.image)
    assert torch.equal(masks, same_masks)
    expected = model.pre_processor.transform(corrupted_pixels)  # the pre-processor's own normalisation
    inside = masks.expand_as(student) > 0
    torch.testing.assert_close(student[inside], expected[inside], rtol=0, atol=1e-5)


def test_a_texture_folder_fills_the_defects(tmp_path: Path, raw_batch) -> None:
    rng = np.random.default_rng(0)
    for index in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"texture{index}.png")
    step = SyntheticAnomalyStep(1.0, blend=(1.0, 1.0), source=tmp_path)
    student, masks = step(raw_batch.image, None)
    inside = masks.expand_as(student) > 0
    assert bool(inside.any())
    assert torch.equal(student[~inside], raw_batch.image[~inside])


def test_seeded_defects_repeat_and_leave_the_global_rng_alone(raw_batch) -> None:
    step = SyntheticAnomalyStep(0.5)
    seed = defect_seed(0, epoch=2, batch_index=5)
    torch.manual_seed(11)
    first, first_masks = step(raw_batch.image, None, seed=seed)
    after_first = torch.rand(3)
    torch.manual_seed(99)  # another global state: the seeded draw must not depend on it
    second, second_masks = step(raw_batch.image, None, seed=seed)
    assert torch.equal(first, second)
    assert torch.equal(first_masks, second_masks)
    torch.manual_seed(11)
    assert torch.equal(torch.rand(3), after_first)  # the draw did not advance the global RNG
    _, other_masks = step(raw_batch.image, None, seed=defect_seed(0, epoch=2, batch_index=6))
    assert not torch.equal(other_masks, first_masks)


def test_defect_seeds_differ_by_run_epoch_batch_and_rank() -> None:
    places = list(itertools.product(range(3), range(3), range(4), range(2)))
    seeds = [defect_seed(*place) for place in places]
    assert len(set(seeds)) == len(places)
    assert all(0 <= seed < 2**63 for seed in seeds)
    assert defect_seed(7, 1, 2, 0) == defect_seed(7, 1, 2, 0)


def test_push_away_is_zero_outside_the_masks_and_falls_as_the_features_move_apart() -> None:
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 16, 8, 8, generator=generator)
    direction = torch.randn(2, 16, 8, 8, generator=generator)
    no_defect = torch.zeros(2, 1, 32, 32)
    assert torch.equal(push_away_distance(teacher, teacher, no_defect, margin=0.5), torch.zeros(2))

    masks = torch.zeros(2, 1, 32, 32)
    masks[:, :, 8:24, 8:24] = 1.0
    values = [push_away_distance(teacher, teacher + step * direction, masks, 1.0).mean() for step in (0, 0.3, 0.6, 1.2)]
    assert values[0] == pytest.approx(1.0)  # student == corrupted teacher: the full margin
    assert all(later < earlier for earlier, later in itertools.pairwise(values))

    # A student that differs only outside the defect gets the full margin: nothing outside is pushed.
    outside_only = teacher.clone()
    outside_only[:, :, :2] += 5 * direction[:, :, :2]
    assert push_away_distance(teacher, outside_only, masks, 1.0).tolist() == pytest.approx([1.0, 1.0])


def test_hard_position_distillation_with_every_position_is_the_mean_pixel_term() -> None:
    generator = torch.Generator().manual_seed(0)
    teacher = {"a": torch.randn(2, 8, 6, 6, generator=generator), "b": torch.randn(2, 4, 3, 3, generator=generator)}
    student = {name: features + torch.randn(features.shape, generator=generator) for name, features in teacher.items()}
    for level in teacher:
        count = teacher[level].shape[-1] * teacher[level].shape[-2]
        torch.testing.assert_close(
            hard_pixel_cosine_distance(teacher[level], student[level], count),
            pixel_cosine_distance(teacher[level], student[level]),
        )
    plain = DcamLoss()(teacher, student)
    assert torch.equal(DcamLoss(hard_fraction=1.0)(teacher, student).total, plain.total)
    hard = DcamLoss(hard_fraction=0.2)(teacher, student)
    assert hard.pixel > plain.pixel  # the hardest positions are further apart than the average
    with_global = DcamLoss(global_weight=2.0)(teacher, student)
    assert with_global.total == pytest.approx((plain.total + 2.0 * with_global.global_cosine).item(), rel=1e-6)


def test_every_term_is_logged_and_training_lowers_the_loss_with_every_option_on(
    texture_root: Path,
    tmp_path: Path,
    raw_batch,
) -> None:
    torch.manual_seed(0)
    model = _small_dcam(**EVERY_OPTION)
    batch = _normalised(model, raw_batch)
    optimizer = model.configure_optimizers()
    model.model.train()
    losses = []
    for _ in range(20):
        loss = model.training_step(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])

    fitted = _small_dcam(**EVERY_OPTION)
    datamodule = MVTecAD(root=texture_root, category="brick", train_batch_size=4, eval_batch_size=4, num_workers=0)
    engine = Engine(max_epochs=1, default_root_dir=tmp_path, logger=False, accelerator="cpu", enable_progress_bar=False)
    engine.fit(model=fitted, datamodule=datamodule)
    for term in ("pixel", "channel", "kd", "global", "push"):
        assert torch.isfinite(engine.trainer.callback_metrics[f"train_{term}_loss"]), term


def test_the_student_sees_the_corrupted_image_and_the_teacher_the_clean_one(raw_batch) -> None:
    model = _small_dcam(synthetic_anomaly_probability=1.0)
    batch = _normalised(model, raw_batch)
    seen: dict[str, torch.Tensor] = {}

    def remember_input(name: str):
        def hook(module: torch.nn.Module, args: tuple, output: object) -> None:  # returns None: output unchanged
            seen.setdefault(name, args[0])

        return hook

    model.model.teacher_model.register_forward_hook(remember_input("teacher"))
    model.model.student_model.register_forward_hook(remember_input("student"))
    model.model.train()
    model.training_step(batch)
    assert torch.equal(seen["teacher"], batch.image)
    assert not torch.equal(seen["student"], batch.image)


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"synthetic_anomaly_probability": 1.5}, "synthetic_anomaly_probability"),
        ({"synthetic_anomaly_probability": -0.1}, "synthetic_anomaly_probability"),
        ({"push_weight": 1.0, "synthetic_anomaly_probability": 0.0}, "push_weight"),
        ({"synthetic_anomaly_probability": 0.5, "synthetic_anomaly_blend": [0.9, 0.1]}, "synthetic_anomaly_blend"),
        ({"synthetic_anomaly_blend": [0.5]}, "synthetic_anomaly_blend"),
        ({"synthetic_anomaly_source": "/no/such/folder"}, "synthetic_anomaly_source"),
        ({"hard_fraction": 0.0}, "hard_fraction"),
        ({"hard_fraction": 1.5}, "hard_fraction"),
        ({"global_weight": -1.0}, "global_weight"),
        ({"push_margin": 3.0, "synthetic_anomaly_probability": 0.5, "push_weight": 1.0}, "push_margin"),
    ],
)
def test_bad_training_signal_options_name_the_option(options: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        Dcam(pre_trained=False, **options)


def test_find_normalize_refuses_two_normalisations() -> None:
    normalize = v2.Normalize(mean=[0.5] * 3, std=[0.5] * 3)
    assert find_normalize(v2.Compose([v2.Resize((8, 8)), normalize])) is normalize
    assert find_normalize(v2.Resize((8, 8))) is None
    with pytest.raises(ValueError, match="at most one Normalize"):
        find_normalize(v2.Compose([normalize, normalize]))


def test_defaults_are_denoising_at_half_probability_with_faint_defects_and_the_top_pixel_score() -> None:
    model = _small_dcam()
    assert model.synthetic_anomalies is not None
    assert model.synthetic_anomalies.probability == 0.5
    assert model.synthetic_anomalies.blend == (0.2, 1.0)
    assert model.synthetic_anomalies.source is None
    assert model.model.image_score.top_fraction == 0.001
