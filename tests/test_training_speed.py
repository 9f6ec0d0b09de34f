# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Training-speed options: teacher-feature cache, mixed precision, channels-last layout."""

import logging
import os
from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from torchvision.transforms import v2

from anomalib_dcam import Dcam
from anomalib_dcam.models.dcam import DCAM_PAPER_OPTIONS
from anomalib_dcam.models.dcam.teacher_cache import (
    CacheStorage,
    TeacherFeatureCache,
    image_keys,
    non_deterministic_transforms,
)
from conftest import quiet_engine

IMAGE_SIZE = 64


def _small_dcam(**kwargs: object) -> Dcam:
    pre_processor = Dcam.configure_pre_processor(image_size=(IMAGE_SIZE, IMAGE_SIZE))
    return Dcam(**{"pre_trained": False, "pre_processor": pre_processor, **kwargs})


def _datamodule(root: Path, **kwargs: object) -> MVTecAD:
    return MVTecAD(root=root, category="brick", train_batch_size=4, eval_batch_size=4, num_workers=0, **kwargs)


def _fit(model: Dcam, root: Path, tmp_path: Path, epochs: int = 2, **engine_kwargs: object) -> Engine:
    torch.manual_seed(0)
    engine = quiet_engine(tmp_path, epochs, **engine_kwargs)
    engine.fit(model=model, datamodule=_datamodule(root))
    return engine


def _features(batch: int, value: float = 0.0) -> dict[str, torch.Tensor]:
    return {"a": torch.full((batch, 2, 4, 4), value), "b": torch.full((batch, 3, 2, 2), value)}


def test_cache_counts_hits_and_misses_and_returns_what_was_stored() -> None:
    cache = TeacherFeatureCache(dtype="float32")
    cache.reset(fingerprint="f", expected_items=3)
    assert cache.get(["x", "y"]) == [None, None]
    features = {"a": torch.arange(64.0).reshape(2, 2, 4, 4), "b": -torch.arange(24.0).reshape(2, 3, 2, 2)}
    cache.put(["x", "y"], features)
    slots = cache.get(["y", "x", "z"])
    assert slots[2] is None
    assert (cache.stats.hits, cache.stats.misses) == (2, 3)
    assert cache.stats.hit_rate == pytest.approx(2 / 5)
    read = cache.read(slots[:2], device=torch.device("cpu"), dtype=torch.float32)
    assert torch.equal(read["a"], features["a"].flip(0))
    assert torch.equal(read["b"], features["b"].flip(0))
    assert cache.stored_items == 2
    assert cache.stored_bytes == 2 * (32 + 12) * 4


def test_cache_cap_stops_storing_and_counts_the_overflow() -> None:
    per_image_bytes = (32 + 12) * 2  # float16
    cache = TeacherFeatureCache(max_gb=2.5 * per_image_bytes / 1024**3)
    cache.reset(fingerprint="f", expected_items=10)
    cache.put(["a", "b", "c", "d"], _features(4, 1.0))
    assert cache.stored_items == 2
    assert cache.stats.overflow == 2
    assert cache.get(["c"]) == [None]


def test_a_new_fingerprint_or_an_edited_file_is_a_miss(tmp_path: Path) -> None:
    image = tmp_path / "image.png"
    image.write_bytes(b"one")
    cache = TeacherFeatureCache()
    cache.reset(fingerprint="resize64", expected_items=1)
    (key,) = image_keys([str(image)])
    cache.put([key], _features(1))
    assert cache.get([key]) == [0]
    image.write_bytes(b"other")
    os.utime(image, ns=(1, 1))
    assert image_keys([str(image)]) != [key]
    cache.reset(fingerprint="resize128", expected_items=1)
    assert cache.get([key]) == [None]


def test_disk_cache_stores_in_files_and_removes_its_temporary_folder(tmp_path: Path) -> None:
    cache = TeacherFeatureCache(storage="disk", directory=tmp_path / "cache")
    cache.reset(fingerprint="f", expected_items=2)
    features = {"a": torch.rand(2, 2, 4, 4), "b": torch.rand(2, 3, 2, 2)}
    cache.put(["x", "y"], features)
    assert sorted(path.name for path in (tmp_path / "cache").iterdir()) == ["level0_a.bin", "level1_b.bin"]
    read = cache.read(cache.get(["x", "y"]), device=torch.device("cpu"), dtype=torch.float32)
    torch.testing.assert_close(read["a"], features["a"], rtol=1e-3, atol=1e-3)
    temporary = TeacherFeatureCache(storage="disk")
    temporary.reset(fingerprint="f", expected_items=1)
    temporary.put(["x"], _features(1))
    folder = Path(temporary._temporary_directory)
    assert folder.is_dir()
    temporary.close()
    assert not folder.exists()


def test_random_transforms_are_named() -> None:
    deterministic = v2.Compose([v2.Resize((64, 64)), v2.Normalize(mean=[0.5] * 3, std=[0.5] * 3)])
    assert non_deterministic_transforms(deterministic) == []
    assert non_deterministic_transforms(None) == []
    random = v2.Compose([v2.RandomHorizontalFlip(), deterministic, v2.ColorJitter(0.1)])
    assert non_deterministic_transforms(random) == ["RandomHorizontalFlip", "ColorJitter"]


def test_cache_is_refused_under_random_training_transforms(
    texture_root: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = _small_dcam(teacher_cache="memory")
    datamodule = _datamodule(texture_root, train_augmentations=v2.RandomHorizontalFlip())
    engine = Engine(max_epochs=1, default_root_dir=tmp_path, logger=False, accelerator="cpu", enable_progress_bar=False)
    with caplog.at_level(logging.WARNING, logger="anomalib_dcam"):
        engine.fit(model=model, datamodule=datamodule)
    assert "RandomHorizontalFlip" in model.teacher_cache.disabled_reason
    assert model.teacher_cache.stats.hits == model.teacher_cache.stats.misses == 0
    assert any("Teacher-feature cache disabled" in record.message for record in caplog.records)


def _cache_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if "Teacher-feature cache" in record.getMessage()]


def test_auto_is_the_default_and_stays_off_until_a_fit_decides() -> None:
    model = _small_dcam()
    assert model.teacher_cache.auto
    assert not model.teacher_cache.enabled  # a training step outside a fit trains on unrounded teacher features


def test_auto_caches_in_memory_with_deterministic_transforms(
    texture_root: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = _small_dcam()
    with caplog.at_level(logging.INFO, logger="anomalib_dcam"):
        _fit(model, texture_root, tmp_path, epochs=1)
    cache = model.teacher_cache
    assert cache.enabled
    assert cache.storage == CacheStorage.MEMORY
    assert cache.stats.misses == 8  # the 8 training images went through the cache
    (record,) = _cache_records(caplog)[:1]
    assert record.levelno == logging.INFO
    assert "on in memory (teacher_cache='auto')" in record.getMessage()
    assert "8 training images" in record.getMessage()


def test_auto_falls_back_to_no_cache_under_a_random_transform(
    texture_root: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = _small_dcam()
    datamodule = _datamodule(texture_root, train_augmentations=v2.RandomHorizontalFlip())
    with caplog.at_level(logging.INFO, logger="anomalib_dcam"):
        quiet_engine(tmp_path, 1).fit(model=model, datamodule=datamodule)
    assert "RandomHorizontalFlip" in model.teacher_cache.disabled_reason
    assert model.teacher_cache.stats.hits == model.teacher_cache.stats.misses == 0
    records = _cache_records(caplog)
    assert [record.levelno for record in records] == [logging.INFO]  # a fallback, not a warning
    assert "off (teacher_cache='auto')" in records[0].getMessage()
    assert "RandomHorizontalFlip" in records[0].getMessage()


def test_auto_falls_back_to_no_cache_over_the_cap(
    texture_root: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # One resnet18 pyramid at 64 px in float16 is about 60 KB: 8 images do not fit in 100 KB.
    model = _small_dcam(teacher_cache_max_gb=100e3 / 1024**3)
    with caplog.at_level(logging.INFO, logger="anomalib_dcam"):
        _fit(model, texture_root, tmp_path, epochs=1)
    reason = model.teacher_cache.disabled_reason
    assert "teacher_cache_max_gb" in reason
    assert "8 training images" in reason
    assert model.teacher_cache.stats.hits == model.teacher_cache.stats.misses == 0
    assert [record.levelno for record in _cache_records(caplog)] == [logging.INFO]


def test_auto_falls_back_to_no_cache_without_a_datamodule(caplog: pytest.LogCaptureFixture) -> None:
    from anomalib_dcam.models.dcam.cached_teacher import start_teacher_cache

    model = _small_dcam()
    # fit(train_dataloaders=...): no datamodule, no transforms to check.
    with caplog.at_level(logging.INFO, logger="anomalib_dcam"):
        start_teacher_cache(
            model.teacher_cache, model.model.teacher_model, None, model.pre_processor.transform, model.device
        )
    assert "datamodule" in model.teacher_cache.disabled_reason
    assert [record.levelno for record in _cache_records(caplog)] == [logging.INFO]


def test_cached_loss_equals_the_uncached_loss_on_the_same_batch(texture_root: Path) -> None:
    datamodule = _datamodule(texture_root)
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    reference = _small_dcam()
    batch.image = reference.pre_processor.transform(batch.image)
    reference.model.train()
    expected = reference.loss(*reference.model(batch.image)[:2]).total
    for dtype, tolerance in (("float32", 0.0), ("float16", 1e-3)):
        model = _small_dcam(teacher_cache="memory", teacher_cache_dtype=dtype)
        model.model.load_state_dict(reference.model.state_dict())
        model.model.train()
        model.teacher_cache.reset(fingerprint="test", expected_items=len(batch.image))
        for expected_hits in (0, len(batch.image)):  # first a miss that fills the cache, then a hit
            hits = model.teacher_cache.stats.hits
            features = model._cached_teacher_features(batch, batch.image)
            assert model.teacher_cache.stats.hits - hits == expected_hits
            loss = model.loss(*model.model(batch.image, teacher_features=features)[:2]).total
            torch.testing.assert_close(loss, expected, rtol=tolerance, atol=0.0)


# float16: every epoch trains on the features rounded as stored (the first one too), measured at most 3e-3 apart.
@pytest.mark.parametrize(("dtype", "tolerance"), [("float32", 0.0), ("float16", 5e-3)])
def test_cached_and_uncached_training_give_the_same_model(
    texture_root: Path,
    tmp_path: Path,
    dtype: str,
    tolerance: float,
) -> None:
    models = {}
    cached = {"teacher_cache": "memory", "teacher_cache_dtype": dtype}
    for name, options in (("plain", {"teacher_cache": "off"}), ("cached", cached)):
        torch.manual_seed(0)
        models[name] = _small_dcam(**options)
        _fit(models[name], texture_root, tmp_path / name, epochs=2)
    stats = models["cached"].teacher_cache.stats
    assert stats.misses == 8  # the 8 training images, once
    assert stats.hits == 8  # all of them in the second epoch
    for (name, plain), cached in zip(
        models["plain"].model.student_model.state_dict().items(),
        models["cached"].model.student_model.state_dict().values(),
        strict=True,
    ):
        torch.testing.assert_close(cached, plain, rtol=tolerance, atol=tolerance, msg=name)


def test_bf16_mixed_trains_with_float32_loss_terms_and_saves_a_float32_checkpoint(
    texture_root: Path,
    tmp_path: Path,
) -> None:
    # Every loss term on, DCAM's attention included, so that each is checked in float32.
    model = _small_dcam(teacher_cache="memory", **DCAM_PAPER_OPTIONS)
    engine = _fit(model, texture_root, tmp_path, epochs=1, precision="bf16-mixed")
    for term in ("train_loss", "train_pixel_loss", "train_channel_loss", "train_kd_loss"):
        assert torch.isfinite(engine.trainer.callback_metrics[term]), term

    images = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    model.model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model.model(images)
        assert next(iter(output.student_features.values())).dtype == torch.bfloat16
        losses = model.loss(output.teacher_features, output.student_features)
    assert all(term.dtype == torch.float32 for term in losses if term is not None)
    model.model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.model(images).anomaly_map.dtype == torch.float32

    checkpoint = tmp_path / "bf16.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    restored = Dcam.load_from_checkpoint(checkpoint)
    assert all(parameter.dtype == torch.float32 for parameter in restored.parameters())
    assert all(value.dtype == torch.float32 for value in restored.state_dict().values() if value.is_floating_point())


def test_channels_last_gives_the_same_loss_and_leaves_plain_tensors_after_fit(
    texture_root: Path, tmp_path: Path
) -> None:
    images = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    model = _small_dcam(channels_last=True)
    model.model.train()
    expected = model.loss(*model.model(images)[:2]).total
    model.model.to(memory_format=torch.channels_last)
    layout = model.loss(*model.model(images.contiguous(memory_format=torch.channels_last))[:2]).total
    torch.testing.assert_close(layout, expected, rtol=1e-5, atol=1e-6)

    _fit(model, texture_root, tmp_path, epochs=1)
    assert all(parameter.is_contiguous() for parameter in model.parameters())


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"teacher_cache": "ram"}, "teacher_cache"),
        ({"teacher_cache": "memory", "teacher_cache_max_gb": 0}, "teacher_cache_max_gb"),
        ({"teacher_cache_max_gb": -1}, "teacher_cache_max_gb"),
        ({"teacher_cache_dtype": "int8"}, "teacher_cache_dtype"),
        ({"channels_last": "yes"}, "channels_last"),
    ],
)
def test_bad_speed_options_name_the_option(options: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        Dcam(pre_trained=False, **options)


@pytest.mark.slow
def test_train_speed_script_records_the_package_timing(
    texture_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``benchmarks/train_speed.py``'s worker times with ``TrainingMonitor`` and writes the record's fields."""
    import argparse
    import json

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import train_speed

    result = tmp_path / "resnet18" / "dcam_config.json"
    args = argparse.Namespace(
        backbone="resnet18",
        setting="dcam_config",
        result=result,
        run_dir=tmp_path / "run",
        root=texture_root,
        categories=["brick"],
        images=8,
        val_images=2,
        epochs=2,
    )
    train_speed.worker(args)
    record = json.loads(result.read_text())
    assert record["settings"]["setting"] == "dcam_config"
    results = record["results"]
    images = [epoch["images"] for epoch in results["epochs"]]
    assert images == [images[0]] * 2  # the training images left after the held-out split, every epoch
    assert all(epoch["val_images"] > 0 for epoch in results["epochs"])
    assert all(epoch["step_parts_s"] is not None for epoch in results["epochs"])
    for field in ("train_img_s", "first_epoch_img_s", "val_img_s", "startup_s", "peak_rss_gb"):
        assert results[field] > 0, field
    assert list(results["step_split"]) == [*train_speed.STEP_PARTS, "data_wait", "other"]
    assert results["teacher_cache"]["hits"] == images[0]  # the second epoch read every teacher feature from the cache
