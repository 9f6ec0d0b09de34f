# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Multi-category datamodule, held-out-normal model selection and per-category metrics, on tiny synthetic data."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from anomalib.cli import AnomalibCLI
from anomalib.data import AnomalibDataModule, ImageBatch
from anomalib.data.datasets.image.mvtecad import CATEGORIES as MVTEC_AD_CATEGORIES
from anomalib.engine import Engine
from anomalib.pre_processing import PreProcessor
from lightning.pytorch import Callback
from PIL import Image
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_dcam import Dcam
from anomalib_dcam.callbacks import MONITORED_METRIC, HeldOutNormalCheckpoint, PerCategoryMetrics
from anomalib_dcam.callbacks.per_category import compute_anomaly_metrics
from anomalib_dcam.data import MultiClassMVTec, MultiClassMVTecDataset, categories_by_image_path
from anomalib_dcam.post_processing import CategoryPostProcessor

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA_ROOT = REPOSITORY_ROOT.parent / "shared" / "data" / "industrial"
IMAGE_SIZE = 32
# category -> (grayscale, training images); each category has 2 good and 2 defect test images.
SYNTHETIC_CATEGORIES = {"a": (False, 10), "b": (True, 10), "c": (False, 5)}


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_category(
    root: Path,
    name: str,
    grayscale: bool = False,
    train_images: int = 5,
    good_test_images: int = 2,
    defect_test_images: int = 2,
    with_masks: bool = True,
    seed: int = 0,
) -> None:
    """Write one category in the MVTec AD layout: noisy grey images, defects are a bright square.

    ``with_masks=False`` writes no ``ground_truth/`` folder: a category with image labels only.
    """
    rng = np.random.default_rng(seed)
    shape = (IMAGE_SIZE, IMAGE_SIZE) if grayscale else (IMAGE_SIZE, IMAGE_SIZE, 3)

    def normal_image() -> np.ndarray:
        return rng.integers(90, 110, shape, dtype=np.uint8)

    for index in range(train_images):
        _save_png(root / name / "train" / "good" / f"{index:03d}.png", normal_image())
    for index in range(good_test_images):
        _save_png(root / name / "test" / "good" / f"{index:03d}.png", normal_image())
    for index in range(defect_test_images):
        image = normal_image()
        image[8:16, 8:16] = 255
        mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        mask[8:16, 8:16] = 255
        _save_png(root / name / "test" / "square" / f"{index:03d}.png", image)
        if with_masks:
            _save_png(root / name / "ground_truth" / "square" / f"{index:03d}_mask.png", mask)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "tiny_mvtec"
    for seed, (name, (grayscale, train_images)) in enumerate(SYNTHETIC_CATEGORIES.items()):
        make_category(root, name, grayscale=grayscale, train_images=train_images, seed=seed)
    return root


def small_dcam(**options: object) -> Dcam:
    """A random-weight DCAM at 64 px, so that a few epochs take seconds on a CPU."""
    transform = Compose([Resize((64, 64), antialias=True), Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    return Dcam(backbone="resnet18", pre_trained=False, pre_processor=PreProcessor(transform=transform), **options)


# ---------------------------------------------------------------------------------------------- datamodule


def test_union_sizes_and_category_tags(dataset_root: Path) -> None:
    datamodule = MultiClassMVTec(root=dataset_root, categories=["a", "b"], num_workers=0)
    datamodule.setup()

    train, val, test = datamodule.train_data.samples, datamodule.val_data.samples, datamodule.test_data.samples
    assert len(train) + len(val) == 20  # 10 + 10 training normals pooled
    assert len(val) == 4  # 20 % held out
    assert len(test) == 8  # 4 + 4 test images
    assert set(train.category) == {"a", "b"}
    # The default split turns half of each category's held-out normals into synthetic anomalies of that category.
    synthetic = val.label_index == 1
    assert synthetic.sum() == sum(count // 2 for count in val.groupby("category").size())
    assert set(val.category) <= {"a", "b"}
    assert test.groupby("category").size().to_dict() == {"a": 4, "b": 4}
    assert (test.groupby("category").label_index.sum() == 2).all()
    # The tag agrees with the folder every image comes from (a synthetic anomaly's: abnormal/<category>/).
    for samples in (train, val[~synthetic], test):
        assert all(
            Path(path).relative_to(dataset_root).parts[0] == tag
            for path, tag in zip(samples.image_path, samples.category, strict=True)
        )
    assert all(
        Path(path).parent.name == tag
        for path, tag in zip(val.image_path[synthetic], val.category[synthetic], strict=True)
    )
    summary = datamodule.summary()
    assert summary.loc["a"].to_dict() == {
        "train": int((train.category == "a").sum()),
        "val": int(((val.category == "a") & ~synthetic).sum()),  # held-out normals
        "val_synthetic": int(((val.category == "a") & synthetic).sum()),
        "test_normal": 2,
        "test_anomalous": 2,
        "masks": True,
    }
    assert summary.val.sum() + summary.val_synthetic.sum() == 4
    assert datamodule.category == "a+b"
    assert datamodule.name == "tiny_mvtec"


def test_no_validation_split_sets_up(dataset_root: Path) -> None:
    datamodule = MultiClassMVTec(root=dataset_root, categories=["a", "b"], val_split_mode="none", num_workers=0)
    datamodule.setup()
    assert len(datamodule.train_data) == 20
    assert len(datamodule.test_data) == 8
    assert getattr(datamodule, "val_data", None) is None
    assert "val" not in datamodule.summary().columns


def test_every_category_by_default_and_grayscale_read_as_rgb(dataset_root: Path) -> None:
    datamodule = MultiClassMVTec(root=dataset_root, num_workers=0, eval_batch_size=16)
    assert datamodule.categories == ["a", "b", "c"]
    assert datamodule.category == "all"
    datamodule.setup()
    assert len(datamodule.train_data) + len(datamodule.val_data) == 25
    assert len(datamodule.test_data) == 12

    grayscale_index = datamodule.test_data.samples.index[datamodule.test_data.samples.category == "b"][0]
    item = datamodule.test_data[int(grayscale_index)]
    assert item.image.shape == (3, IMAGE_SIZE, IMAGE_SIZE)

    # A collated batch carries image_path, which maps back to the category of each sample.
    batch = next(iter(datamodule.test_dataloader()))
    assert isinstance(batch, ImageBatch)
    category_of = categories_by_image_path(datamodule.test_data)
    assert [category_of[path] for path in batch.image_path] == [
        Path(path).relative_to(dataset_root).parts[0] for path in batch.image_path
    ]


def test_held_out_split_is_seeded_disjoint_and_twenty_percent(dataset_root: Path) -> None:
    def split(seed: int) -> tuple[set[str], set[str]]:
        datamodule = MultiClassMVTec(root=dataset_root, val_split_mode="from_train", val_split_ratio=0.2, seed=seed)
        datamodule.setup()
        assert (datamodule.val_data.samples.label_index == 0).all()
        return set(datamodule.train_data.samples.image_path), set(datamodule.val_data.samples.image_path)

    train, val = split(seed=0)
    assert len(val) == 5  # 20 % of 25 pooled training normals
    assert not train & val
    assert len(train | val) == 25
    assert split(seed=0) == (train, val)  # same files for the same seed
    assert split(seed=1)[1] != val  # another seed, another hold-out


def test_datamodule_is_accepted_by_anomalibs_config_parser(dataset_root: Path, tmp_path: Path) -> None:
    config = tmp_path / "data.yaml"
    config.write_text(
        "class_path: anomalib_dcam.data.MultiClassMVTec\n"
        f"init_args:\n  root: {dataset_root}\n  categories: [a, c]\n  num_workers: 0\n"
    )
    datamodule = AnomalibDataModule.from_config(config_path=config)
    assert isinstance(datamodule, MultiClassMVTec)
    assert datamodule.categories == ["a", "c"]


# ---------------------------------------------------------------------------------------------- errors


def test_unknown_category_lists_the_categories_found(dataset_root: Path) -> None:
    with pytest.raises(ValueError, match=r"categories=.*'nope'.*found there: a, b, c") as error:
        MultiClassMVTec(root=dataset_root, categories=["a", "nope"])
    assert str(dataset_root) in str(error.value)


def test_category_without_test_images(tmp_path: Path) -> None:
    make_category(tmp_path, "ok")
    make_category(tmp_path, "no_test", good_test_images=0, defect_test_images=0)
    datamodule = MultiClassMVTec(root=tmp_path, categories=["ok", "no_test"])
    with pytest.raises(ValueError, match=r"categories: 'no_test' has no test image"):
        datamodule.setup()


def test_ground_truth_folder_missing_a_mask_is_a_named_error(tmp_path: Path) -> None:
    make_category(tmp_path, "partial_masks")
    (tmp_path / "partial_masks" / "ground_truth" / "square" / "000_mask.png").unlink()
    with pytest.raises(
        ValueError, match=r"categories: 'partial_masks' has defect images without a mask.*square/000\.png"
    ):
        MultiClassMVTecDataset(root=tmp_path, categories=["partial_masks"], split="test")


def test_category_without_ground_truth_has_image_labels_only(tmp_path: Path) -> None:
    from anomalib_dcam.data.multiclass import categories_without_masks, has_masks
    from anomalib_dcam.data.preflight import check_samples

    make_category(tmp_path, "masks", seed=0)
    make_category(tmp_path, "labels_only", with_masks=False, seed=1)
    assert has_masks(tmp_path / "masks")
    assert not has_masks(tmp_path / "labels_only")

    alone = MultiClassMVTecDataset(root=tmp_path, categories=["labels_only"], split="test")
    assert alone.task.value == "classification"
    assert alone.samples.label_index.tolist() == [0, 0, 1, 1]
    assert alone[2].gt_mask is None
    assert int(alone[2].gt_label) == 1

    both = MultiClassMVTecDataset(root=tmp_path, categories=["masks", "labels_only"], split="test")
    assert both.task.value == "segmentation"
    assert categories_without_masks(both) == {"labels_only"}
    samples = both.samples
    defect = int(samples.index[(samples.category == "labels_only") & (samples.label_index == 1)][0])
    masked_defect = int(samples.index[(samples.category == "masks") & (samples.label_index == 1)][0])
    # An empty mask keeps the batch collatable; the masked category keeps its real mask.
    assert both[defect].gt_mask.shape == (IMAGE_SIZE, IMAGE_SIZE)
    assert int(both[defect].gt_mask.sum()) == 0
    assert int(both[masked_defect].gt_mask.sum()) > 0
    assert ImageBatch.collate([both[defect], both[masked_defect]]).gt_mask.shape == (2, IMAGE_SIZE, IMAGE_SIZE)
    assert check_samples(samples) == []  # no "defective image without a mask" for the category with labels only

    datamodule = MultiClassMVTec(root=tmp_path, num_workers=0, val_split_mode="from_train")
    datamodule.setup()
    assert datamodule.summary().masks.to_dict() == {"labels_only": False, "masks": True}


def test_unified_run_over_categories_with_and_without_masks_trains_tests_and_exports(tmp_path: Path) -> None:
    from anomalib.deploy import ExportType

    root = tmp_path / "data"
    make_category(root, "masks", train_images=8, seed=0)
    make_category(root, "labels_only", train_images=8, with_masks=False, seed=1)
    datamodule = MultiClassMVTec(root=root, train_batch_size=8, num_workers=0, val_split_ratio=0.4)
    report = PerCategoryMetrics(print_table=False)
    engine = Engine(
        max_epochs=1,
        callbacks=[HeldOutNormalCheckpoint(), report],
        default_root_dir=tmp_path / "run",
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
    )
    model = small_dcam()
    engine.train(model=model, datamodule=datamodule)

    rows = {row["category"]: row for row in report.results}
    assert rows["masks"]["masks"] is True
    assert rows["labels_only"]["masks"] is False
    for category in ("masks", "labels_only"):
        assert not math.isnan(rows[category]["image_AUROC"])
    assert not math.isnan(rows["masks"]["pixel_AUROC"])
    assert not math.isnan(rows["masks"]["pixel_AUPRO"])
    assert math.isnan(rows["labels_only"]["pixel_AUROC"])
    assert math.isnan(rows["labels_only"]["pixel_AUPRO"])
    # The mean and the pooled pixel metrics cover the category with masks only.
    assert rows["mean"]["pixel_AUROC"] == pytest.approx(rows["masks"]["pixel_AUROC"])
    assert rows["global"]["pixel_AUROC"] == pytest.approx(rows["masks"]["pixel_AUROC"])

    exported = engine.export(model=model, export_type=ExportType.OPENVINO, export_root=tmp_path / "export")
    assert exported is not None
    assert Path(exported).is_file()


def test_root_errors_name_the_root(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match=r"root='.*missing' is not an existing folder"):
        MultiClassMVTec(root=missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"root='.*empty' holds no category"):
        MultiClassMVTec(root=tmp_path / "empty")


def test_split_options_are_checked(dataset_root: Path) -> None:
    with pytest.raises(ValueError, match=r"val_split_mode='held_out' is not supported; accepted values are"):
        MultiClassMVTec(root=dataset_root, val_split_mode="held_out")
    with pytest.raises(ValueError, match=r"val_split_ratio=1\.2 is not accepted"):
        MultiClassMVTec(root=dataset_root, val_split_ratio=1.2)
    with pytest.raises(ValueError, match=r"categories=\[\] selects nothing"):
        MultiClassMVTec(root=dataset_root, categories=[])


# ---------------------------------------------------------------------------------------------- metrics


def test_metrics_match_hand_computed_values() -> None:
    scores, labels = torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])
    # Of the 4 (anomalous, normal) pairs, 3 rank the anomalous image higher: AUROC 3/4. The best threshold, 0.35,
    # flags 0.4, 0.35 and 0.8: precision 2/3, recall 1, F1 0.8.
    metrics = compute_anomaly_metrics(scores, labels)
    assert metrics["image_AUROC"] == pytest.approx(0.75)
    assert metrics["image_F1Max"] == pytest.approx(0.8)
    assert math.isnan(metrics["pixel_AUROC"])

    # Raw scores far outside [0, 1] (where a sigmoid would saturate) give the same values.
    raw = compute_anomaly_metrics(scores * 1000 + 50, labels)
    assert raw["image_AUROC"] == pytest.approx(0.75)
    assert raw["image_F1Max"] == pytest.approx(0.8)

    # The same four values as the pixels of one 2x2 map whose right column is one defect region. Pixel AUROC: 3/4.
    # AUPRO: the region pixel scored 0.8 beats both background pixels, so up to FPR 0.5 half the region is found;
    # the area up to FPR 0.3 is 0.3 * 0.5, divided by 0.3: 0.5.
    anomaly_map = torch.tensor([[[0.1, 0.8], [0.4, 0.35]]])
    mask = torch.tensor([[[0, 1], [0, 1]]])
    pixel = compute_anomaly_metrics(torch.tensor([0.8]), torch.tensor([1]), anomaly_map, mask, fpr_limit=0.3)
    assert pixel["pixel_AUROC"] == pytest.approx(0.75)
    assert pixel["pixel_AUPRO"] == pytest.approx(0.5)
    assert math.isnan(pixel["image_AUROC"])  # one image, one class: undefined


def _fake_trainer(datamodule: object, output_dir: Path) -> SimpleNamespace:
    return SimpleNamespace(datamodule=datamodule, test_dataloaders=None, world_size=1, default_root_dir=output_dir)


def test_per_category_report_groups_by_category(dataset_root: Path, tmp_path: Path) -> None:
    datamodule = MultiClassMVTec(root=dataset_root, categories=["a", "b"])
    datamodule.setup()
    test_samples = datamodule.test_data.samples
    paths = {category: list(test_samples.image_path[test_samples.category == category]) for category in ("a", "b")}
    labels = {category: list(test_samples.label_index[test_samples.category == category]) for category in ("a", "b")}
    # Category a is ranked perfectly, category b perfectly wrong; pooled, half the pairs are right.
    scores = {
        "a": [2.0 if label else 1.0 for label in labels["a"]],
        "b": [0.5 if label else 3.0 for label in labels["b"]],
    }
    order = [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3)]  # mixed batches

    callback = PerCategoryMetrics(output_dir=tmp_path, print_table=False)
    trainer = _fake_trainer(datamodule, tmp_path)
    callback.on_test_epoch_start(trainer, None)
    for start in range(0, len(order), 3):
        chunk = order[start : start + 3]
        batch = ImageBatch(
            image=torch.zeros(len(chunk), 3, 4, 4),
            gt_label=torch.tensor([labels[category][index] for category, index in chunk]),
            pred_score=torch.tensor([scores[category][index] for category, index in chunk]),
            image_path=[paths[category][index] for category, index in chunk],
        )
        callback.on_test_batch_end(trainer, None, batch, batch, start // 3)
    callback.on_test_end(trainer, None)

    rows = {row["category"]: row for row in callback.results}
    assert list(rows) == ["a", "b", "mean", "global"]
    assert rows["a"]["image_AUROC"] == pytest.approx(1.0)
    assert rows["b"]["image_AUROC"] == pytest.approx(0.0)
    assert rows["mean"]["image_AUROC"] == pytest.approx(0.5)
    # Pooled: a's anomalous (2.0) beat a's normal (1.0) but not b's (3.0); b's anomalous (0.5) beat nothing.
    assert rows["global"]["image_AUROC"] == pytest.approx(4 / 16)
    assert rows["global"]["images"] == 8
    assert math.isnan(rows["a"]["pixel_AUROC"])  # no anomaly maps in these batches

    with (tmp_path / "per_category_metrics.csv").open() as file:
        assert [row["category"] for row in csv.DictReader(file)] == ["a", "b", "mean", "global"]
    report = json.loads((tmp_path / "per_category_metrics.json").read_text())
    assert set(report["per_category"]) == {"a", "b"}
    assert report["mean"]["pixel_AUROC"] is None


def test_per_category_report_without_categories_uses_the_datamodule_category(tmp_path: Path) -> None:
    datamodule = SimpleNamespace(category="bottle")  # e.g. anomalib's MVTecAD: no category column
    callback = PerCategoryMetrics(print_table=False)
    trainer = _fake_trainer(datamodule, tmp_path)
    callback.on_test_epoch_start(trainer, None)
    batch = ImageBatch(
        image=torch.zeros(4, 3, 4, 4),
        gt_label=torch.tensor([0, 0, 1, 1]),
        pred_score=torch.tensor([0.1, 0.4, 0.35, 0.8]),
        anomaly_map=torch.rand(4, 1, 8, 8),
        gt_mask=torch.zeros(4, 8, 8, dtype=torch.bool).index_fill_(1, torch.tensor([2]), True),
        image_path=[f"/data/{index}.png" for index in range(4)],
    )
    callback.on_test_batch_end(trainer, None, batch, batch, 0)
    callback.on_test_end(trainer, None)

    assert [row["category"] for row in callback.results] == ["bottle", "mean", "global"]
    assert callback.results[0]["image_AUROC"] == pytest.approx(0.75)
    assert 0 <= callback.results[0]["pixel_AUPRO"] <= 1
    assert (tmp_path / "per_category_metrics.csv").is_file()


# ---------------------------------------------------------------------------------------------- training


class _RecordMonitoredScore(Callback):
    def __init__(self) -> None:
        self.scores: list[float] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.scores.append(float(trainer.callback_metrics[MONITORED_METRIC]))


def test_held_out_checkpoint_keeps_the_lowest_score_and_restores_it(dataset_root: Path, tmp_path: Path) -> None:
    np.random.seed(0)  # anomalib draws which held-out images get synthetic anomalies from NumPy's global state
    # 40 % held out: each category then has enough held-out normals for synthetic anomalies of its own.
    datamodule = MultiClassMVTec(
        root=dataset_root,
        categories=["a", "b"],
        train_batch_size=8,
        num_workers=0,
        val_split_ratio=0.4,
    )
    checkpoint = HeldOutNormalCheckpoint()
    recorder = _RecordMonitoredScore()
    report = PerCategoryMetrics(print_table=False)
    engine = Engine(
        max_epochs=3,
        callbacks=[checkpoint, recorder, report],
        default_root_dir=tmp_path,
        accelerator="cpu",
        enable_progress_bar=False,
    )
    # anomalib's F1-adaptive threshold, which needs the synthetic anomalies (the default sets it from the normals).
    engine.train(model=small_dcam(post_processor=CategoryPostProcessor(threshold="f1")), datamodule=datamodule)

    assert len(recorder.scores) == 3
    assert float(checkpoint.best_model_score) == pytest.approx(min(recorder.scores))
    # The split's synthetic anomalies put the F1 threshold below the top of the normalisation range; from normals
    # alone it would be the largest normal score, the top of the range.
    post_processor = engine.model.post_processor
    assert float(post_processor.image_threshold) < float(post_processor.image_max)
    assert engine.best_model_path == checkpoint.best_model_path
    assert Path(checkpoint.best_model_path).parent == Path(engine.trainer.default_root_dir) / "weights" / "lightning"

    # The report of the test that followed fit, in the run's folder.
    assert [row["category"] for row in report.results] == ["a", "b", "mean", "global"]
    assert (Path(engine.trainer.default_root_dir) / "per_category_metrics.json").is_file()

    # Restoring brings back the selected weights whatever the model holds.
    model = engine.model
    with torch.no_grad():
        for parameter in model.model.student_model.parameters():
            parameter.add_(1.0)
    checkpoint.on_fit_end(engine.trainer, model)
    saved = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[name], msg=name)


def test_held_out_checkpoint_keeps_the_selection_at_each_milestone(dataset_root: Path, tmp_path: Path) -> None:
    datamodule = MultiClassMVTec(
        root=dataset_root, categories=["a"], train_batch_size=8, num_workers=0, val_split_mode="from_train"
    )
    checkpoint = HeldOutNormalCheckpoint(milestones=[2, 1])
    recorder = _RecordMonitoredScore()
    engine = Engine(
        max_epochs=3,
        callbacks=[checkpoint, recorder],
        default_root_dir=tmp_path,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
    )
    engine.fit(model=small_dcam(), datamodule=datamodule)

    assert checkpoint.milestones == (1, 2)
    assert not checkpoint.milestone_path(3).exists()
    for epochs in (1, 2):
        # The checkpoint an epochs-long run would have selected: the lowest score among its first epochs.
        selected = min(range(epochs), key=lambda epoch: recorder.scores[epoch])
        saved = torch.load(checkpoint.milestone_path(epochs), map_location="cpu", weights_only=False)
        assert saved["epoch"] == selected
    with pytest.raises(ValueError, match=r"milestones=\[0\] is not accepted"):
        HeldOutNormalCheckpoint(milestones=[0])


def test_held_out_checkpoint_refuses_a_validation_set_with_anomalies(dataset_root: Path, tmp_path: Path) -> None:
    datamodule = MultiClassMVTec(root=dataset_root, categories=["a"], val_split_mode="same_as_test", num_workers=0)
    engine = Engine(max_epochs=1, callbacks=[HeldOutNormalCheckpoint()], default_root_dir=tmp_path, accelerator="cpu")
    with pytest.raises(
        ValueError, match=r"val_split_mode='same_as_test'.*set val_split_mode='synthetic' or 'from_train'"
    ):
        engine.fit(model=small_dcam(), datamodule=datamodule)


def _validate_one_batch(checkpoint: HeldOutNormalCheckpoint, split_mode: str, labels: list[int]) -> dict[str, float]:
    """Run the callback's validation hooks on one batch of scores 0.1, 0.2, ...; return what it logged."""
    logged: dict[str, float] = {}
    module = SimpleNamespace(log=lambda name, value, **_: logged.update({name: float(value)}), device="cpu")
    trainer = SimpleNamespace(datamodule=SimpleNamespace(val_split_mode=split_mode, val_data=[0, 1]), world_size=1)
    checkpoint.on_fit_start(trainer, module)
    checkpoint.on_validation_epoch_start(trainer, module)
    scores = torch.arange(1, len(labels) + 1, dtype=torch.float32) / 10
    batch = SimpleNamespace(pred_score=scores, gt_label=torch.tensor(labels))
    checkpoint.on_validation_batch_end(trainer, module, batch, batch, 0)
    checkpoint.on_validation_epoch_end(trainer, module)
    return logged


def test_held_out_checkpoint_selects_on_the_normals_of_a_synthetic_split() -> None:
    logged = _validate_one_batch(HeldOutNormalCheckpoint(), "synthetic", [0, 1, 0, 1])
    assert logged[MONITORED_METRIC] == pytest.approx((0.1 + 0.3) / 2)
    # Held-out normals only: the mean of every image.
    assert _validate_one_batch(HeldOutNormalCheckpoint(), "from_train", [0, 0])[MONITORED_METRIC] == pytest.approx(0.15)
    # Anomalies that are not synthetic are refused: they could only come from the test set.
    with pytest.raises(ValueError, match="not synthetic"):
        _validate_one_batch(HeldOutNormalCheckpoint(), "from_train", [0, 1])


# ---------------------------------------------------------------------------------------------- command line


def _anomalib_command() -> str:
    return str(Path(sys.executable).parent / "anomalib")


@pytest.mark.parametrize("config", ["dcam_mvtec_unified.yaml", "dcam_industrial_unified.yaml"])
def test_shipped_configs_parse(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    # anomalib's own command-line parser, in-process: --print_config parses without instantiating anything.
    with pytest.raises(SystemExit) as exit_info:
        AnomalibCLI(["train", "--config", str(REPOSITORY_ROOT / "configs" / config), "--print_config"], run=False)
    assert exit_info.value.code in {0, None}
    printed = capsys.readouterr().out
    assert "class_path: anomalib_dcam.data.MultiClassMVTec" in printed
    assert "class_path: anomalib_dcam.callbacks.HeldOutNormalCheckpoint" in printed
    assert "class_path: anomalib_dcam.callbacks.PerCategoryMetrics" in printed
    assert "val_split_mode: synthetic" in printed
    if config == "dcam_mvtec_unified.yaml":
        assert all(f"- {category}\n" in printed for category in MVTEC_AD_CATEGORIES)


@pytest.mark.slow
def test_command_line_trains_and_writes_the_report(dataset_root: Path, tmp_path: Path) -> None:
    command = [
        _anomalib_command(), "train",
        "--model", "Dcam", "--model.pre_trained", "false", "--model.backbone", "resnet18",
        "--data", "anomalib_dcam.data.MultiClassMVTec", "--data.root", str(dataset_root),
        "--data.categories", "[a,b]", "--data.num_workers", "0",
        "--data.train_batch_size", "8", "--data.eval_batch_size", "8",
        "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
        "--trainer.callbacks+=anomalib_dcam.callbacks.HeldOutNormalCheckpoint",
        "--trainer.callbacks+=anomalib_dcam.callbacks.PerCategoryMetrics",
        "--default_root_dir", str(tmp_path / "results"),
    ]  # fmt: skip
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_folder = tmp_path / "results" / "Dcam" / "tiny_mvtec" / "a+b" / "v0"
    with (run_folder / "per_category_metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [row["category"] for row in rows] == ["a", "b", "mean", "global"]
    assert all(0 <= float(row["image_AUROC"]) <= 1 for row in rows)
    report = json.loads((run_folder / "per_category_metrics.json").read_text())
    assert set(report["per_category"]) == {"a", "b"}
    assert report["global"]["images"] == 8
    assert (run_folder / "weights" / "lightning" / "model.ckpt").is_file()
    assert "Per-category test metrics" in result.stdout
    # The checkpoint carries the product recognition and its names (docs/multiclass.md).
    restored = Dcam.load_from_checkpoint(run_folder / "weights" / "lightning" / "model.ckpt", weights_only=True)
    assert restored.post_processor.category_names == ["a", "b"]
    assert restored.post_processor.category_image_threshold.shape == (2,)


# ---------------------------------------------------------------------------------------------- real data


@pytest.mark.real_data
@pytest.mark.skipif(not REAL_DATA_ROOT.is_dir(), reason="needs ../shared/data/industrial")
def test_real_industrial_categories_set_up() -> None:
    categories = ["bottle", "magnetic_tile"]
    datamodule = MultiClassMVTec(root=REAL_DATA_ROOT, categories=categories, num_workers=0, val_split_mode="from_train")
    datamodule.setup()
    summary = datamodule.summary()
    assert (summary.train + summary.val).to_dict() == {"bottle": 209, "magnetic_tile": 761}
    assert summary.val.sum() == 194  # 20 % of 970
    # The default split holds out the same number, half of them turned into synthetic anomalies.
    synthetic = MultiClassMVTec(root=REAL_DATA_ROOT, categories=categories, num_workers=0)
    synthetic.setup()
    assert len(synthetic.val_data) == 194
    # Half of each category's held-out normals become synthetic anomalies of that category.
    held_out = synthetic.val_data.samples.groupby("category").size()
    assert synthetic.summary().val_synthetic.to_dict() == {name: count // 2 for name, count in held_out.items()}
    assert synthetic.summary().train.sum() == summary.train.sum()
    assert summary.test_normal.to_dict() == {"bottle": 20, "magnetic_tile": 191}
    assert summary.test_anomalous.to_dict() == {"bottle": 63, "magnetic_tile": 392}
    grayscale = datamodule.test_data.samples.index[datamodule.test_data.samples.category == "magnetic_tile"][0]
    assert datamodule.test_data[int(grayscale)].image.shape[0] == 3
