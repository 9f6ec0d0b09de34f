# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""One deployed model for every product: product recognition and per-category calibration, on tiny data."""

import csv
import importlib.util
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.metrics import AUROC
from anomalib.models import Stfpm
from anomalib.models.components import TimmFeatureExtractor
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from lightning.pytorch import seed_everything
from PIL import Image
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_dcam import Dcam
from anomalib_dcam.data import MultiClassMVTec
from anomalib_dcam.post_processing import UNKNOWN_CATEGORY, CategoryPostProcessor, pooled_features
from conftest import quiet_engine

IMAGE_SIZE = 32
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "score_folder_openvino.py"


def _texture(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Clearly different products: a dark smooth plate, bright vertical stripes, a mid-grey checkerboard."""
    if kind == "plate":
        image = rng.integers(20, 40, (IMAGE_SIZE, IMAGE_SIZE, 3))
    elif kind == "stripes":
        image = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3)) + 60
        image[:, ::4] = 230
        image = image + rng.integers(0, 10, image.shape)
    else:
        grid = (np.indices((IMAGE_SIZE, IMAGE_SIZE)) // 4).sum(axis=0) % 2
        image = np.repeat((grid * 120 + 70)[..., None], 3, axis=2) + rng.integers(0, 10, (IMAGE_SIZE, IMAGE_SIZE, 3))
    return image.clip(0, 255).astype(np.uint8)


def make_product(root: Path, kind: str, seed: int, train: int = 10, good: int = 3, defect: int = 3) -> None:
    """One category in the MVTec AD layout; a defect is a bright square."""
    rng = np.random.default_rng(seed)

    def save(path: Path, array: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)

    for index in range(train):
        save(root / kind / "train" / "good" / f"{index:03d}.png", _texture(kind, rng))
    for index in range(good):
        save(root / kind / "test" / "good" / f"{index:03d}.png", _texture(kind, rng))
    for index in range(defect):
        image = _texture(kind, rng)
        image[8:16, 8:16] = 255
        mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        mask[8:16, 8:16] = 255
        save(root / kind / "test" / "square" / f"{index:03d}.png", image)
        save(root / kind / "ground_truth" / "square" / f"{index:03d}_mask.png", mask)


@pytest.fixture(scope="module")
def products(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("products") / "line"
    for seed, kind in enumerate(("plate", "stripes", "checker")):
        make_product(root, kind, seed)
    return root


def _pre_processor() -> PreProcessor:
    transform = Compose([Resize((64, 64), antialias=True), Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    return PreProcessor(transform=transform)


def _datamodule(root: Path, categories: list[str]) -> MultiClassMVTec:
    return MultiClassMVTec(
        root=root,
        categories=categories,
        train_batch_size=8,
        eval_batch_size=8,
        num_workers=0,
        val_split_ratio=0.4,
        seed=0,
    )


@pytest.fixture(scope="module")
def trained(products: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Dcam, Path]:
    """A random-weight Dcam trained for one epoch on two products (plate, stripes)."""
    seed_everything(0)
    model = Dcam(backbone="resnet18", pre_trained=False, pre_processor=_pre_processor())
    root = tmp_path_factory.mktemp("run")
    quiet_engine(root).fit(model=model, datamodule=_datamodule(products, ["plate", "stripes"]))
    return model, root


def _images(root: Path, category: str, subset: str = "test") -> list[torch.Tensor]:
    """Every image of one category's ``subset`` as a ``(1, 3, 64, 64)`` float batch in ``[0, 1]``."""
    resize = Resize((64, 64), antialias=True)
    return [
        resize(torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float() / 255)
        for path in sorted((root / category / subset).rglob("*.png"))
    ]


def _score(model: torch.nn.Module, root: Path, category: str, subset: str = "test") -> list:
    """Run the deployed (exported) forward pass on every image of one category's ``subset``."""
    with torch.no_grad():
        return [model(image) for image in _images(root, category, subset)]


def test_products_are_recognised_and_carry_their_names(trained: tuple[Dcam, Path], products: Path) -> None:
    model, _ = trained
    post_processor = model.post_processor
    assert isinstance(post_processor, CategoryPostProcessor)
    assert post_processor.is_multi_category
    assert post_processor.category_names == ["plate", "stripes"]
    model.eval()
    for index, category in enumerate(("plate", "stripes")):
        outputs = _score(model, products, category)
        assert [int(output.pred_category) for output in outputs] == [index] * 6  # normal and defective alike
        assert post_processor.category_name(index) == category


def test_an_unknown_product_is_flagged_anomalous(trained: tuple[Dcam, Path], products: Path) -> None:
    model, _ = trained
    model.eval()
    outputs = _score(model, products, "checker", subset="train")
    assert all(int(output.pred_category) == UNKNOWN_CATEGORY for output in outputs)
    assert all(bool(output.pred_label) for output in outputs)
    assert model.post_processor.category_name(UNKNOWN_CATEGORY) == "unknown"


def test_validation_anomalies_keep_their_category(products: Path) -> None:
    datamodule = _datamodule(products, ["plate", "stripes"])
    datamodule.setup()
    val = datamodule.val_data.samples
    synthetic = val[val.label_index == 1]
    assert set(synthetic.category) == {"plate", "stripes"}
    assert all(
        f"/abnormal/{category}/" in path
        for path, category in zip(synthetic.image_path, synthetic.category, strict=True)
    )
    summary = datamodule.summary()
    assert (summary.val + summary.val_synthetic).sum() == len(val)
    assert summary.val_synthetic.to_dict() == synthetic.groupby("category").size().to_dict()


def _validation_trainer(paths: list[str], categories: list[str]) -> SimpleNamespace:
    samples = pd.DataFrame({"image_path": paths, "category": categories})
    return SimpleNamespace(datamodule=SimpleNamespace(val_data=SimpleNamespace(samples=samples)))


def _calibrated(scale: dict[str, float], **options: float) -> tuple[CategoryPostProcessor, torch.Tensor]:
    """A post-processor fitted on two products whose features are unit vectors, validated with scaled scores."""
    post_processor = CategoryPostProcessor(**options)
    features = torch.eye(2).repeat_interleave(4, dim=0)
    post_processor.recognizer.fit(features, torch.tensor([0] * 4 + [1] * 4), 2)
    post_processor.category_names = ["a", "b"]
    paths = [f"{category}/{index}.png" for category in "ab" for index in range(4)]
    trainer = _validation_trainer(paths, ["a"] * 4 + ["b"] * 4)
    labels = torch.tensor([0, 0, 1, 1] * 2)
    raw = torch.tensor([0.1, 0.2, 0.6, 0.7] * 2) * torch.tensor([scale["a"]] * 4 + [scale["b"]] * 4)
    batch = ImageBatch(
        image=torch.zeros(8, 3, 4, 4),
        gt_label=labels,
        pred_score=raw,
        anomaly_map=raw[:, None, None].expand(8, 4, 4).clone(),
        gt_mask=labels[:, None, None].expand(8, 4, 4).bool().clone(),
        image_path=paths,
    )
    post_processor.on_validation_epoch_start(trainer, None)
    post_processor.on_validation_batch_end(trainer, None, batch)
    post_processor.on_validation_epoch_end(trainer, None)
    return post_processor, features


def test_thresholds_follow_each_category_scale() -> None:
    post_processor, _ = _calibrated({"a": 1.0, "b": 10.0})
    thresholds = post_processor.category_image_threshold
    assert thresholds[1] == pytest.approx(10 * thresholds[0])
    assert 0.2 <= thresholds[0] <= 0.6  # between the category's normals and anomalies
    assert post_processor.category_pixel_max.tolist() == pytest.approx([0.7, 7.0])


def test_a_false_alarm_budget_sets_the_threshold_from_the_normals() -> None:
    post_processor, _ = _calibrated({"a": 1.0, "b": 10.0}, normal_quantile=1.0)
    assert post_processor.category_image_threshold.tolist() == pytest.approx([0.2, 2.0])  # the largest normal
    with pytest.raises(ValueError, match=r"normal_quantile=1.5 is not accepted"):
        CategoryPostProcessor(normal_quantile=1.5)


def test_per_category_calibration_restores_the_pooled_ranking() -> None:
    post_processor, features = _calibrated({"a": 1.0, "b": 10.0})
    # Test images of both products: within each, anomalies score higher, but b's normals outscore a's anomalies.
    raw = torch.tensor([0.15, 0.25, 0.55, 0.65] * 2) * torch.tensor([1.0] * 4 + [10.0] * 4)
    labels = torch.tensor([0, 0, 1, 1] * 2)
    pooled = {}
    for calibrated in (True, False):
        post_processor.category_calibration = calibrated
        post_processor._features = features  # what the feature hook keeps during the model's forward pass
        scores = post_processor(SimpleNamespace(pred_score=raw, anomaly_map=None)).pred_score
        pooled[calibrated] = AUROC(fields=["pred_score", "gt_label"])
        pooled[calibrated].update(SimpleNamespace(pred_score=scores, gt_label=labels))
    assert float(pooled[True].compute()) == 1.0  # equals each category's own AUROC
    assert float(pooled[False].compute()) < 1.0


def test_recognition_is_nearest_prototype_with_a_limit() -> None:
    post_processor, features = _calibrated({"a": 1.0, "b": 1.0})
    category, nearest = post_processor.recognizer(torch.cat([features[[0, 5]], torch.ones(1, 2) / 2**0.5]))
    assert category.tolist() == [0, 1, UNKNOWN_CATEGORY]
    assert nearest.tolist()[:2] == [0, 1]
    assert pooled_features({"a": torch.ones(2, 3, 4, 4), "b": torch.ones(2, 5, 2, 2)}).norm(dim=1).tolist() == (
        pytest.approx([1.0, 1.0])
    )


def test_one_category_model_is_unchanged_bit_for_bit(products: Path, tmp_path: Path) -> None:
    outputs = {}
    for name, post_processor in (("category", CategoryPostProcessor()), ("anomalib", PostProcessor())):
        seed_everything(0)
        model = Dcam(
            backbone="resnet18", pre_trained=False, pre_processor=_pre_processor(), post_processor=post_processor
        )
        quiet_engine(tmp_path / name).fit(model=model, datamodule=_datamodule(products, ["plate"]))
        model.eval()
        outputs[name] = _score(model, products, "plate")
        assert not getattr(model.post_processor, "is_multi_category", False)
    for ours, theirs in zip(outputs["category"], outputs["anomalib"], strict=True):
        assert type(ours).__name__ == "InferenceBatch"
        for field in ("pred_score", "pred_label", "anomaly_map", "pred_mask"):
            assert torch.equal(getattr(ours, field), getattr(theirs, field)), field


def test_checkpoint_round_trip_keeps_names_and_outputs(trained: tuple[Dcam, Path], products: Path) -> None:
    model, root = trained
    checkpoint = next(root.rglob("*.ckpt"))
    restored = Dcam.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    assert restored.post_processor.category_names == ["plate", "stripes"]
    model.eval()
    for ours, theirs in zip(_score(model, products, "stripes"), _score(restored, products, "stripes"), strict=True):
        assert torch.equal(ours.pred_category, theirs.pred_category)
        assert torch.allclose(ours.pred_score, theirs.pred_score)


def test_engine_test_reports_the_deployed_category(trained: tuple[Dcam, Path], products: Path) -> None:
    model, root = trained
    predictions = quiet_engine(root).predict(model=model, datamodule=_datamodule(products, ["plate", "stripes"]))
    names = [name for batch in predictions for name in batch.pred_category_name]
    paths = [path for batch in predictions for path in batch.image_path]
    assert names == [Path(path).relative_to(products).parts[0] for path in paths]


def test_any_anomalib_model_stfpm(products: Path, tmp_path: Path) -> None:
    seed_everything(0)

    def random_extractor(**kwargs: object) -> TimmFeatureExtractor:  # no hub weights offline
        return TimmFeatureExtractor(**{**kwargs, "pre_trained": False})

    with mock.patch("anomalib.models.image.stfpm.torch_model.TimmFeatureExtractor", random_extractor):
        model = Stfpm(pre_processor=_pre_processor(), post_processor=CategoryPostProcessor())
    quiet_engine(tmp_path).fit(model=model, datamodule=_datamodule(products, ["plate", "stripes"]))
    model.eval()
    assert [int(output.pred_category) for output in _score(model, products, "stripes")] == [1] * 6


def test_openvino_export_keeps_names_and_parity(
    trained: tuple[Dcam, Path],
    products: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from anomalib_dcam.deploy import OpenVINOModel, compile_openvino, openvino_inferencer, read_category_names_from_file

    monkeypatch.chdir(tmp_path)  # the inferencer writes ./openvino_cache
    model, _ = trained
    model.eval()
    xml_path = model.to_openvino(tmp_path, input_size=(64, 64))
    assert read_category_names_from_file(xml_path) == ["plate", "stripes"]
    compiled = compile_openvino(xml_path)  # f32 precision hint
    ir_model = OpenVINOModel(xml_path, visualizer=False)
    inferencer = openvino_inferencer(xml_path)
    for category in ("plate", "stripes", "checker"):
        for image in _images(products, category):
            with torch.no_grad():
                expected = model(image)
            results = {next(iter(output.names)): value for output, value in compiled(image.numpy()).items()}
            assert np.abs(results["pred_score"] - expected.pred_score.numpy()).max() <= 1e-4
            assert np.array_equal(results["pred_category"], expected.pred_category.numpy())
            from_ir = ir_model.model(image)
            assert torch.equal(from_ir.pred_category, expected.pred_category)
            named = inferencer.predict(image)
            assert named.pred_category_name == [model.post_processor.category_name(int(expected.pred_category))]
    # The folder-scoring example names each image's product in its CSV.
    spec = importlib.util.spec_from_file_location("score_folder_openvino", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main(["--model", str(xml_path), "--images", str(products), "--output", "scores"]) == 0
    with (tmp_path / "scores" / "scores.csv").open() as file:
        rows = list(csv.DictReader(file))
    expected_names = {"plate": "plate", "stripes": "stripes", "checker": "unknown"}
    images = [row for row in rows if "/ground_truth/" not in row["image"]]  # the masks are scored too; skip them
    assert len(images) == 3 * (10 + 6)
    assert all(row["category"] == expected_names[row["image"].split("/")[0]] for row in images)


@pytest.mark.parametrize("compression", ["FP16", "INT8_PTQ"])
def test_compressed_ir_recognises_the_same_products(
    trained: tuple[Dcam, Path],
    products: Path,
    tmp_path: Path,
    compression: str,
) -> None:
    from anomalib.deploy import CompressionType

    from anomalib_dcam.deploy import OpenVINOModel

    model, _ = trained
    model.eval()
    datamodule = _datamodule(products, ["plate", "stripes"])
    datamodule.setup()
    xml_path = model.to_openvino(
        tmp_path,
        input_size=(64, 64),
        compression_type=CompressionType[compression],
        datamodule=datamodule,
    )
    ir_model = OpenVINOModel(xml_path, visualizer=False)
    assert ir_model.category_names == ["plate", "stripes"]
    for category in ("plate", "stripes", "checker"):
        for image in _images(products, category):
            with torch.no_grad():
                expected = model(image).pred_category
            assert torch.equal(ir_model.model(image).pred_category, expected)


def test_a_known_category_skips_recognition(trained: tuple[Dcam, Path], products: Path) -> None:
    model, _ = trained
    model.eval()
    post_processor = model.post_processor
    recognised = _score(model, products, "stripes")
    post_processor.known_category = "plate"
    try:
        forced = _score(model, products, "stripes")
        assert [int(output.pred_category) for output in forced] == [0] * 6
        # Plate's calibration, not stripes', maps the scores: the anomaly maps change (image scores may saturate).
        assert any(not torch.equal(a.anomaly_map, b.anomaly_map) for a, b in zip(forced, recognised, strict=True))
        post_processor.known_category = "bottle"
        with pytest.raises(ValueError, match=r"known_category='bottle'.*plate, stripes"):
            _score(model, products, "stripes")
    finally:
        post_processor.known_category = None
