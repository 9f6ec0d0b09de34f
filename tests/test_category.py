# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""One deployed model for every product: product recognition and per-category calibration, on tiny data."""

import copy
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
    limits = post_processor.recognizer.distance_limits.clone()
    for index, category in enumerate(("plate", "stripes")):
        outputs = _score(model, products, category)  # three normal, then three defective images
        assert [int(output.pred_category) for output in outputs[:3]] == [index] * 3
        # The limit lets 1 % of a product's normal images through as unknown; a defect that moves an image's
        # features farther (here a bright square over 6 % of the image) is flagged unknown, and then anomalous. It is
        # never taken for the other product.
        for output in outputs[3:]:
            assert int(output.pred_category) in {index, UNKNOWN_CATEGORY}
            assert bool(output.pred_label) or int(output.pred_category) == index
        post_processor.recognizer.distance_limits.fill_(float("inf"))
        try:
            nearest = [int(output.pred_category) for output in _score(model, products, category)]
        finally:
            post_processor.recognizer.distance_limits.copy_(limits)
        assert nearest == [index] * 6  # the nearest prototype is the image's own product, normal and defective alike
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
    # The deprecated normal_quantile still works as it did, with a warning that points to false_alarm_rate.
    with pytest.warns(FutureWarning, match=r"normal_quantile=\.\.\.\) is deprecated.*false_alarm_rate"):
        post_processor, _ = _calibrated({"a": 1.0, "b": 10.0}, normal_quantile=1.0)
    assert post_processor.category_image_threshold.tolist() == pytest.approx([0.2, 2.0])  # the largest normal
    with pytest.raises(ValueError, match=r"normal_quantile=1.5 is not accepted"):
        CategoryPostProcessor(normal_quantile=1.5)


@pytest.mark.parametrize(("threshold", "warned"), [("false_alarm_rate", False), ("f1", True)])
def test_normal_only_validation_warns_only_when_the_rule_needs_defects(
    threshold: str, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # Held-out training normals are all the false-alarm rule needs; anomalib's F1 rule warns that it lacks defects.
    post_processor = CategoryPostProcessor(threshold=threshold)
    paths = [f"a/{index}.png" for index in range(8)]
    scores = torch.linspace(0.1, 0.8, 8)
    batch = ImageBatch(
        image=torch.zeros(8, 3, 4, 4),
        gt_label=torch.zeros(8, dtype=torch.long),
        pred_score=scores,
        anomaly_map=scores[:, None, None].expand(8, 4, 4).clone(),
        gt_mask=torch.zeros(8, 4, 4, dtype=torch.bool),
        image_path=paths,
    )
    trainer = _validation_trainer(paths, ["a"] * 8)
    with caplog.at_level("WARNING"):
        post_processor.on_validation_epoch_start(trainer, None)
        post_processor.on_validation_batch_end(trainer, None, batch)
        post_processor.on_validation_epoch_end(trainer, None)
    assert any("does not contain any anomalous images" in message for message in caplog.messages) is warned
    assert float(post_processor.image_threshold) >= 0.1  # calibrated either way, from the normals' scores


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


def _exponential(count: int, mean: float, generator: torch.Generator) -> torch.Tensor:
    return -mean * torch.log(torch.rand(count, generator=generator))


def _known_normals(count: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Normal scores from known distributions: a ~ N(1, 0.1^2), b ~ 10 + Exp(mean 2) (another scale and shape)."""
    return {"a": 1 + 0.1 * torch.randn(count, generator=generator), "b": 10 + _exponential(count, 2.0, generator)}


def _true_false_alarm_rate(category: str, threshold: float) -> float:
    """Share of the category's normal distribution above ``threshold``."""
    from scipy.stats import norm

    return float(norm.sf((threshold - 1) / 0.1)) if category == "a" else float(np.exp(-(threshold - 10) / 2))


def _validated_on_known_normals(
    count: int = 199,
    **options: object,
) -> tuple[CategoryPostProcessor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Two products validated on ``count`` normals each from known distributions, plus faint synthetic anomalies.

    The synthetic anomalies score inside the normals' range, as anomalib's faint Perlin anomalies do: an F1 threshold
    would fall to the lowest score, the false-alarm threshold must ignore them.

    Returns:
        The post-processor, the normal scores and the normal anomaly maps (4 x 4) of each category.
    """
    generator = torch.Generator().manual_seed(3)
    post_processor = CategoryPostProcessor(**options)
    post_processor.recognizer.fit(torch.eye(2).repeat_interleave(4, dim=0), torch.tensor([0] * 4 + [1] * 4), 2)
    post_processor.category_names = ["a", "b"]
    normals = _known_normals(count, generator)
    faint = {"a": 0.8 + 0.2 * torch.rand(50, generator=generator), "b": 10 + torch.rand(50, generator=generator)}
    maps = {
        category: scores[:, None, None] + 0.05 * torch.randn(count, 4, 4, generator=generator)
        for category, scores in normals.items()
    }
    paths, categories, labels, scores, anomaly_maps = [], [], [], [], []
    for category in "ab":
        for label, values, category_maps in ((0, normals[category], maps[category]), (1, faint[category], None)):
            paths += [f"{category}/{label}/{index}.png" for index in range(len(values))]
            categories += [category] * len(values)
            labels.append(torch.full((len(values),), label))
            scores.append(values)
            anomaly_maps.append(
                category_maps if category_maps is not None else values[:, None, None].expand(-1, 4, 4) + 1
            )
    labels = torch.cat(labels)
    trainer = _validation_trainer(paths, categories)
    batch = ImageBatch(
        image=torch.zeros(len(paths), 3, 4, 4),
        gt_label=labels,
        pred_score=torch.cat(scores),
        anomaly_map=torch.cat(anomaly_maps),
        gt_mask=labels[:, None, None].expand(-1, 4, 4).bool().clone(),
        image_path=paths,
    )
    post_processor.on_validation_epoch_start(trainer, None)
    post_processor.on_validation_batch_end(trainer, None, batch)
    post_processor.on_validation_epoch_end(trainer, None)
    return post_processor, normals, maps


def _deploy(
    post_processor: CategoryPostProcessor, category: str, scores: torch.Tensor, maps: torch.Tensor | None = None
) -> object:
    """The deployed outputs of images of one category (features as the hook would keep them)."""
    post_processor._features = torch.eye(2)[[0 if category == "a" else 1] * len(scores)]
    return post_processor(SimpleNamespace(pred_score=scores, anomaly_map=maps))


def test_default_thresholds_meet_the_false_alarm_budget() -> None:
    post_processor, normals, maps = _validated_on_known_normals()
    report = post_processor.calibration_report["categories"]
    generator = torch.Generator().manual_seed(4)
    fresh = _known_normals(50_000, generator)
    for index, category in enumerate("ab"):
        # 199 normals resolve 1 %: the threshold is the 2nd largest normal score (k = floor(0.01 * 200)); the faint
        # synthetic anomalies play no part.
        threshold = float(post_processor.category_image_threshold[index])
        assert threshold == float(normals[category].sort(descending=True).values[1])
        assert report[category]["image"]["rule"] == "order_statistic"
        assert report[category]["image"]["expected_rate"] == pytest.approx(0.01)
        # On the held-out normals themselves exactly one (k - 1) is flagged.
        assert int(_deploy(post_processor, category, normals[category]).pred_label.sum()) == 1
        # On new normals the deployed labels flag the threshold's true false-alarm rate, which is Beta(2, 198)
        # distributed around the 1 % budget.
        true_rate = _true_false_alarm_rate(category, threshold)
        flagged = float(_deploy(post_processor, category, fresh[category]).pred_label.float().mean())
        assert flagged == pytest.approx(true_rate, abs=5 * (true_rate * (1 - true_rate) / 50_000) ** 0.5)
        assert 0.0005 < true_rate < 0.045  # the 0.1 % and 99.9 % quantiles of Beta(2, 198)
        # Pixels: 199 x 16 normal pixels resolve the 0.1 % pixel budget: the 3rd largest (floor(0.001 * 3185)).
        pixel_threshold = float(post_processor.category_pixel_threshold[index])
        assert pixel_threshold == float(maps[category].flatten().sort(descending=True).values[2])
        assert report[category]["pixel"]["rank"] == 3


def test_few_normals_extrapolate_and_state_the_uncertainty() -> None:
    post_processor, normals, _ = _validated_on_known_normals(count=40)
    for index, category in enumerate("ab"):
        report = post_processor.calibration_report["categories"][category]["image"]
        assert report["rule"] == "tail_fit"  # 40 normals cannot resolve 1 %
        assert float(post_processor.category_image_threshold[index]) >= float(normals[category].max())
        assert report["upper_bound"] == pytest.approx(1 - 0.05 ** (1 / 40))  # 7.2 %, distribution-free


def test_deployed_scores_keep_each_category_ranking() -> None:
    from sklearn.metrics import roc_auc_score

    post_processor, _, _ = _validated_on_known_normals()
    generator = torch.Generator().manual_seed(5)
    normals = _known_normals(300, generator)
    # Defects overlap the normals and reach far beyond the validation range (where min-max clips).
    defects = {"a": 0.7 + 2 * torch.rand(150, generator=generator), "b": 8 + 40 * torch.rand(150, generator=generator)}
    labels = torch.cat([torch.zeros(300), torch.ones(150)])
    aurocs = {}
    for normalization in ("monotone", "min_max"):
        post_processor.normalization = normalization
        for category in "ab":
            raw = torch.cat([normals[category], defects[category]])
            maps = raw[:, None, None] + torch.linspace(-0.5, 0.5, 16).reshape(1, 4, 4)
            deployed = _deploy(post_processor, category, raw, maps)
            aurocs[normalization, category] = roc_auc_score(labels, deployed.pred_score.double())
            raw_auroc = roc_auc_score(labels, raw.double())
            if normalization == "monotone":
                assert aurocs[normalization, category] == raw_auroc
                # No new ties and the same order, for the scores and for the anomaly maps.
                order = raw.argsort()
                assert (deployed.pred_score[order].diff() > 0).all()
                pixel_order = maps.flatten().argsort()
                assert (deployed.anomaly_map.flatten()[pixel_order].diff() > 0).all()
                assert ((deployed.pred_score > 0) & (deployed.pred_score < 1)).all()
    # anomalib's min-max formula clips both tails: tied deployed scores lose ranking.
    assert any(aurocs["min_max", category] != aurocs["monotone", category] for category in "ab")


def test_threshold_and_score_options_name_what_they_accept() -> None:
    with pytest.raises(
        ValueError, match=r"threshold='max' is not supported; accepted values are 'false_alarm_rate', 'f1'"
    ):
        CategoryPostProcessor(threshold="max")
    with pytest.raises(
        ValueError, match=r"normalization='sigmoid' is not supported; accepted values are 'monotone', 'min_max'"
    ):
        CategoryPostProcessor(normalization="sigmoid")
    for option in ("false_alarm_rate", "pixel_false_alarm_rate", "unknown_rejection_rate"):
        for value in (0, 1, -0.5, "1%", True):
            with pytest.raises(
                ValueError, match=rf"{option}={value!r} is not accepted; it must be a number in \(0, 1\)"
            ):
                CategoryPostProcessor(**{option: value})
    post_processor = CategoryPostProcessor(threshold="F1", normalization="MIN_MAX", false_alarm_rate=0.05)
    assert (post_processor.threshold, post_processor.normalization) == ("f1", "min_max")
    assert post_processor.checkpoint_config()["false_alarm_rate"] == 0.05
    with pytest.warns(FutureWarning, match=r"unknown_margin=\.\.\.\) is deprecated.*unknown_rejection_rate"):
        CategoryPostProcessor(unknown_margin=2.0)


def test_recognition_rejects_known_normals_at_the_stated_rate() -> None:
    """Clusters of pooled features: the limits let 1 % of a known product's new normals through as unknown."""
    generator = torch.Generator().manual_seed(6)
    centres = torch.nn.functional.normalize(torch.randn(3, 16, generator=generator), dim=1)

    def sample(centre: int, count: int) -> torch.Tensor:
        noise = 0.05 * torch.randn(count, 16, generator=generator)
        return torch.nn.functional.normalize(centres[centre] + noise, dim=1)

    for known in ([0], [0, 1]):  # one product, and two
        post_processor = CategoryPostProcessor(recognize_single_category=True)
        features = torch.cat([sample(centre, 400) for centre in known])
        reports = post_processor.recognizer.fit(features, torch.arange(len(known)).repeat_interleave(400), len(known))
        assert post_processor.is_multi_category
        assert [report["rank"] for report in reports] == [4] * len(known)  # floor(0.01 * 401) of 400
        for index, centre in enumerate(known):
            category, _ = post_processor.recognizer(sample(centre, 20_000))
            rejected = float((category == UNKNOWN_CATEGORY).float().mean())
            assert 0.002 < rejected < 0.025  # Beta(4, 397) around 1 %: 99.9 % of thresholds fall in this range
            assert float((category == index).float().mean()) == pytest.approx(1 - rejected)
        category, _ = post_processor.recognizer(sample(2, 1000))  # a product it was not trained on
        assert (category == UNKNOWN_CATEGORY).all()


def test_a_one_category_model_flags_another_texture(tmp_path: Path) -> None:
    root = tmp_path / "line"
    make_product(root, "plate", seed=0, train=100)  # 60 training images left after the validation split
    for seed, kind in ((1, "stripes"), (2, "checker")):
        make_product(root, kind, seed)
    make_product(tmp_path / "fresh", "plate", seed=7, train=50, good=0, defect=0)
    seed_everything(0)
    model = Dcam(
        backbone="resnet18",
        pre_trained=False,
        pre_processor=_pre_processor(),
        post_processor=CategoryPostProcessor(recognize_single_category=True),
    )
    quiet_engine(tmp_path / "run").fit(model=model, datamodule=_datamodule(root, ["plate"]))
    model.eval()
    post_processor = model.post_processor
    assert post_processor.is_multi_category
    assert post_processor.category_names == ["plate"]
    limit = post_processor.calibration_report["unknown_limits"]["plate"]
    assert (limit["rule"], limit["count"]) == ("tail_fit", 60)
    for kind in ("stripes", "checker"):
        outputs = _score(model, root, kind, subset="train")
        assert all(int(output.pred_category) == UNKNOWN_CATEGORY for output in outputs)
        assert all(bool(output.pred_label) for output in outputs)
    # 50 new normal plates: the expected share flagged is 1 % (exponential tail); distribution-free, the limit's
    # true rate is below 4.9 % with 95 % confidence (limit["upper_bound"]).
    fresh = [int(output.pred_category) for output in _score(model, tmp_path / "fresh", "plate", subset="train")]
    assert len(fresh) == 50
    assert fresh.count(UNKNOWN_CATEGORY) <= 3
    assert limit["upper_bound"] == pytest.approx(1 - 0.05 ** (1 / 60))


def test_one_category_model_is_unchanged_bit_for_bit(products: Path, tmp_path: Path) -> None:
    # With anomalib's threshold and normalisation a one-category model is exactly anomalib's post-processor; the
    # defaults (false-alarm thresholds, order-keeping scores) change the values but not the output type.
    outputs, post_processors = {}, {}
    for name, post_processor in (
        ("category", CategoryPostProcessor(threshold="f1", normalization="min_max")),
        ("anomalib", PostProcessor()),
        ("defaults", CategoryPostProcessor()),
    ):
        seed_everything(0)
        model = Dcam(
            backbone="resnet18", pre_trained=False, pre_processor=_pre_processor(), post_processor=post_processor
        )
        quiet_engine(tmp_path / name).fit(model=model, datamodule=_datamodule(products, ["plate"]))
        model.eval()
        outputs[name], post_processors[name] = _score(model, products, "plate"), model.post_processor
        assert not getattr(model.post_processor, "is_multi_category", False)
    for ours, theirs in zip(outputs["category"], outputs["anomalib"], strict=True):
        assert type(ours).__name__ == "InferenceBatch"
        for field in ("pred_score", "pred_label", "anomaly_map", "pred_mask"):
            assert torch.equal(getattr(ours, field), getattr(theirs, field)), field
    for output in outputs["defaults"]:
        assert type(output).__name__ == "InferenceBatch"
        assert 0 < float(output.pred_score) < 1
    assert post_processors["defaults"].calibration_report["overall"]["image"]["rule"] in {"tail_fit", "largest"}


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
    products_of = [Path(path).relative_to(products).parts[0] for path in paths]
    normal = ["/good/" in Path(path).as_posix() for path in paths]
    assert sum(normal) == 6
    # Normal images carry their product's name; a defective one its product's or, beyond the product's limit,
    # "unknown" (see test_products_are_recognised_and_carry_their_names).
    assert [name for name, is_normal in zip(names, normal, strict=True) if is_normal] == [
        product for product, is_normal in zip(products_of, normal, strict=True) if is_normal
    ]
    assert all(name in {product, "unknown"} for name, product in zip(names, products_of, strict=True))


def test_any_anomalib_model_stfpm(products: Path, tmp_path: Path) -> None:
    seed_everything(0)

    def random_extractor(**kwargs: object) -> TimmFeatureExtractor:  # no hub weights offline
        return TimmFeatureExtractor(**{**kwargs, "pre_trained": False})

    with mock.patch("anomalib.models.image.stfpm.torch_model.TimmFeatureExtractor", random_extractor):
        model = Stfpm(pre_processor=_pre_processor(), post_processor=CategoryPostProcessor())
    quiet_engine(tmp_path).fit(model=model, datamodule=_datamodule(products, ["plate", "stripes"]))
    model.eval()
    recognised = [int(output.pred_category) for output in _score(model, products, "stripes")]
    assert recognised[:3] == [1] * 3  # the normal images; a defective one is stripes or unknown, never plate
    assert set(recognised[3:]) <= {1, UNKNOWN_CATEGORY}


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
    for row in images:
        expected = expected_names[row["image"].split("/")[0]]
        # A defective image of a known product is named after it, or "unknown" beyond the product's limit.
        allowed = {expected, "unknown"} if "/test/square/" in row["image"] else {expected}
        assert row["category"] in allowed, row
    assert all(row["category"] == "unknown" for row in images if row["image"].startswith("checker/"))


def _distances(model: Dcam, images: list[torch.Tensor]) -> torch.Tensor:
    """Cosine distance of each image to its nearest prototype (what recognition compares with the limits)."""
    post_processor = model.post_processor
    with torch.no_grad():
        features = torch.cat(
            [
                pooled_features(post_processor.find_feature_module(model)(model.pre_processor.transform(image)))
                for image in images
            ]
        )
    return (1 - features @ post_processor.recognizer.prototypes.T).amin(dim=1)


@pytest.mark.parametrize("compression", ["FP16", "INT8_PTQ"])
def test_compressed_ir_recognises_the_same_products(
    trained: tuple[Dcam, Path],
    products: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    compression: str,
) -> None:
    from anomalib.deploy import CompressionType, OpenVINOInferencer

    from anomalib_dcam.deploy import OpenVINOModel

    model = copy.deepcopy(trained[0]).eval()
    # This tiny random-weight model's calibrated limits sit about 1e-5 above its normals' distances, a margin that
    # FP16 or INT8 rounding of the teacher moves across. A limit halfway between the known products' images and the
    # unknown product keeps every decision clear of the rounding, so that the comparison is about recognition.
    known = _distances(model, [image for category in ("plate", "stripes") for image in _images(products, category)])
    unknown = _distances(model, _images(products, "checker"))
    assert known.max() < unknown.min() / 2
    model.post_processor.recognizer.distance_limits.fill_(float(known.max() + unknown.min()) / 2)
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
    monkeypatch.chdir(tmp_path)  # anomalib's inferencer writes ./openvino_cache
    anomalib_inferencer = OpenVINOInferencer(xml_path, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
    for category in ("plate", "stripes", "checker"):
        for image in _images(products, category):
            with torch.no_grad():
                expected = model(image).pred_category
            from_ir = ir_model.model(image)
            assert torch.equal(from_ir.pred_category, expected)
            # anomalib's own inferencer reads the compressed unified export: anomalib's prediction, the same label.
            prediction = anomalib_inferencer.predict(image)
            assert not hasattr(prediction, "pred_category")
            assert np.array_equal(prediction.pred_label.reshape(-1), from_ir.pred_label.numpy().reshape(-1))


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


# ----------------------------------------------------------------------------------------------------------------------
# Every export of a unified model: anomalib's own inferencers, and the plugin's (threads, any image)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unified_exports(trained: tuple[Dcam, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The two-product model exported to TORCH, ONNX and OpenVINO FP32 (64 x 64 input)."""
    model, _ = trained
    model.eval()
    root = tmp_path_factory.mktemp("unified_exports")
    return {
        "torch": model.to_torch(root),
        "onnx": model.to_onnx(root, input_size=(64, 64)),
        "openvino": model.to_openvino(root, input_size=(64, 64)),
    }


def _all_images(products: Path) -> list[torch.Tensor]:
    return [image for category in ("plate", "stripes", "checker") for image in _images(products, category)]


def test_anomalibs_own_inferencers_read_every_unified_export(
    trained: tuple[Dcam, Path],
    products: Path,
    unified_exports: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from anomalib.deploy import OpenVINOInferencer, TorchInferencer

    from anomalib_dcam.deploy import openvino_inferencer

    model, _ = trained
    model.eval()
    monkeypatch.chdir(tmp_path)  # the OpenVINO inferencers write ./openvino_cache
    monkeypatch.setenv("TRUST_REMOTE_CODE", "1")  # TorchInferencer unpickles the .pt file
    inferencers = {
        "torch": TorchInferencer(unified_exports["torch"], device="cpu"),
        "openvino": OpenVINOInferencer(
            unified_exports["openvino"], device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"}
        ),
        "onnx": OpenVINOInferencer(unified_exports["onnx"], device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"}),
    }
    plugin = {name: openvino_inferencer(unified_exports[name]) for name in ("openvino", "onnx")}
    for image in _all_images(products):
        with torch.no_grad():
            expected = model(image)
        for name, inferencer in inferencers.items():
            prediction = inferencer.predict(image)  # anomalib's usual prediction, no error on the unified model
            score, label = (  # anomalib's TorchInferencer returns tensors that require grad
                (value.detach().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)).reshape(-1)
                for value in (prediction.pred_score, prediction.pred_label)
            )
            assert np.allclose(score, expected.pred_score.numpy().reshape(-1), atol=1e-4), name
            assert np.array_equal(label, expected.pred_label.numpy().reshape(-1)), name
            assert prediction.anomaly_map.shape[-2:] == (64, 64)
        # The product stays available through the plugin's inferencer, from the IR and from the ONNX file.
        for name, inferencer in plugin.items():
            assert inferencer.predict(image).pred_category_name == [
                model.post_processor.category_name(int(expected.pred_category))
            ], name
    assert plugin["onnx"].category_names == ["plate", "stripes"]  # from the ONNX metadata


def test_the_plugin_inferencer_serves_threads_and_any_image(
    products: Path,
    unified_exports: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from anomalib_dcam.deploy import OpenVINOModel, openvino_inferencer

    monkeypatch.chdir(tmp_path)
    inferencer = openvino_inferencer(unified_exports["openvino"])
    images = _all_images(products) * 3
    sequential = [inferencer.predict(image) for image in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(inferencer.predict, images))
    for one, other in zip(sequential, threaded, strict=True):
        assert np.allclose(one.pred_score, other.pred_score, atol=1e-6)
        assert np.array_equal(one.pred_label, other.pred_label)
        assert np.array_equal(one.pred_category, other.pred_category)
        assert one.pred_category_name == other.pred_category_name
    assert {name for batch in threaded for name in batch.pred_category_name} == {"plate", "stripes", "unknown"}
    # An odd-sized grayscale image (45 x 37, uint8) is read as anomalib reads images (gray repeated to RGB) and
    # resized to the IR's 64 x 64 as OpenVINOModel's pre-processor does.
    path = sorted((products / "stripes" / "test" / "good").glob("*.png"))[0]
    gray = np.asarray(Image.open(path).convert("L").resize((37, 45)))
    prediction = inferencer.predict(gray)
    as_rgb = torch.from_numpy(gray).float().div(255)[None, None].expand(1, 3, -1, -1)
    reference = OpenVINOModel(unified_exports["openvino"], visualizer=False)(as_rgb)
    assert np.allclose(prediction.pred_score, reference.pred_score.numpy(), atol=1e-5)
    assert int(prediction.pred_category.reshape(-1)[0]) == int(reference.pred_category)
    rgba = Image.open(path).convert("RGBA")
    assert np.allclose(inferencer.predict(rgba).pred_score, inferencer.predict(Image.open(path)).pred_score)
    with pytest.raises(ValueError, match=r"shape \(45, 37, 2\).*C = 1 \(grayscale\), 3 \(RGB\) or 4 \(RGBA"):
        inferencer.predict(np.zeros((45, 37, 2), dtype=np.uint8))
    with pytest.raises(TypeError, match=r"cannot score a list; pass an image file path"):
        inferencer.predict([[0, 1], [1, 0]])


def test_the_plugin_reads_an_ir_once(
    unified_exports: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import openvino as ov

    from anomalib_dcam.deploy import OpenVINOModel, compile_openvino, openvino_inferencer

    monkeypatch.chdir(tmp_path)
    reads: list[str] = []
    read_model = ov.Core.read_model

    def counting_read_model(self: ov.Core, model: object, *args: object, **kwargs: object) -> ov.Model:
        reads.append(str(model))
        return read_model(self, model, *args, **kwargs)

    monkeypatch.setattr(ov.Core, "read_model", counting_read_model)
    xml = unified_exports["openvino"]
    for build in (openvino_inferencer, compile_openvino, lambda path: OpenVINOModel(path, visualizer=False)):
        reads.clear()
        built = build(xml)
        assert reads == [str(xml)], build
    assert built.category_names == ["plate", "stripes"]
    assert built.ir_input_size == (64, 64)


def test_the_category_output_is_hidden_and_exposed_again(unified_exports: dict[str, Path]) -> None:
    """What the QAT export does to its traced model: anomalib's four outputs, the category tensor kept by name."""
    import openvino as ov

    from anomalib_dcam.deploy import expose_category_output, hide_category_result

    model = ov.Core().read_model(str(unified_exports["openvino"]))
    assert [output.get_any_name() for output in model.outputs] == [
        "pred_score",
        "pred_label",
        "anomaly_map",
        "pred_mask",
    ]
    assert expose_category_output(model)
    assert model.outputs[-1].get_any_name() == "pred_category"
    assert hide_category_result(model)
    assert len(model.outputs) == 4
    assert expose_category_output(model)
    assert not hide_category_result(ov.Core().read_model(str(unified_exports["openvino"])))


# ----------------------------------------------------------------------------------------------------------------------
# INT8 exports: product recognition re-fitted on the quantized teacher's features
# ----------------------------------------------------------------------------------------------------------------------


def _unknown_share(xml_path: Path, images: list[torch.Tensor]) -> float:
    """Share of ``images`` that the IR flags as an unknown product."""
    from anomalib_dcam.deploy import OpenVINOModel

    ir_model = OpenVINOModel(xml_path, visualizer=False).model
    return float(np.mean([int(ir_model(image).pred_category) == UNKNOWN_CATEGORY for image in images]))


def _limits_read_by_recognition(xml_path: Path) -> np.ndarray:
    """The constant that recognition compares distances with: gathered per image, then fed to ``Greater``."""
    import openvino as ov

    limits = []
    for node in ov.Core().read_model(str(xml_path)).get_ordered_ops():
        if node.get_type_name() != "Constant" or len(node.get_output_shape(0)) != 1:
            continue
        for gather in (target.get_node() for target in node.output(0).get_target_inputs()):
            consumers = [target.get_node().get_type_name() for target in gather.output(0).get_target_inputs()]
            if gather.get_type_name().startswith("Gather") and consumers == ["Greater"]:
                limits.append(np.asarray(node.get_data(), dtype=np.float32))
    assert len(limits) == 1
    return limits[0]


def test_int8_export_refits_recognition_on_quantized_features(
    trained: tuple[Dcam, Path],
    products: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import openvino as ov
    from anomalib.deploy import OpenVINOInferencer

    from anomalib_dcam.data.multiclass import categories_by_image_path
    from anomalib_dcam.deploy import NormalsCalibration, OpenVINOModel, export_openvino
    from anomalib_dcam.deploy.recognition_limits import find_recognition_nodes, read_refitted_limits

    model = copy.deepcopy(trained[0]).eval()
    float_limits = model.post_processor.recognizer.distance_limits.numpy().copy()
    datamodule = _datamodule(products, ["plate", "stripes"])
    datamodule.setup()
    fp32_xml = export_openvino(model, tmp_path / "fp32", input_size=(64, 64))
    with caplog.at_level("INFO", logger="anomalib_dcam.deploy.recognition_limits"):
        int8_xml = export_openvino(
            model, tmp_path / "int8", (64, 64), "INT8_PTQ", datamodule=NormalsCalibration(datamodule)
        )
    # FP32 exports are unchanged: the training limits, nothing re-fitted.
    assert np.array_equal(_limits_read_by_recognition(fp32_xml), float_limits)
    assert read_refitted_limits(ov.Core().read_model(str(fp32_xml))) == {}
    recognizer = model.post_processor.recognizer
    assert find_recognition_nodes(ov.Core().read_model(str(fp32_xml)), recognizer) is not None
    # The INT8 IR holds prototypes re-centred on its own features, no longer the floating-point ones.
    assert find_recognition_nodes(ov.Core().read_model(str(int8_xml)), recognizer) is None
    # The INT8 IR compares with the re-fitted limits it records, and the log names the old and the new ones.
    report = read_refitted_limits(ov.Core().read_model(str(int8_xml)))
    assert list(report) == ["plate", "stripes"]
    refitted = np.array([report[name]["limit"] for name in ("plate", "stripes")], dtype=np.float32)
    assert np.array_equal(_limits_read_by_recognition(int8_xml), refitted)
    assert [report[name]["float_limit"] for name in ("plate", "stripes")] == pytest.approx(float_limits.tolist())
    assert not np.array_equal(refitted, float_limits)
    assert all(0.9 < report[name]["prototype_cosine"] < 1 for name in ("plate", "stripes"))
    category_of = categories_by_image_path(datamodule.train_data)  # every training normal, with its product
    assert [report[name]["images"] for name in ("plate", "stripes")] == [
        list(category_of.values()).count(name) for name in ("plate", "stripes")
    ]
    for name in ("plate", "stripes"):
        assert any(f"INT8 unknown-product limit of {name}" in message for message in caplog.messages)
    # Known normals: the training normals the limits were re-fitted on and the normal test images (held out). The
    # re-fitted INT8 model flags them no more often than the FP32 model and the stated rate (the tail rule sets each
    # limit at or above its largest normal distance for so few normals, so none of the training normals).
    resize = Resize((64, 64), antialias=True)
    train_normals = [
        resize(torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float() / 255)
        for path in sorted(category_of)
    ]
    assert _unknown_share(int8_xml, train_normals) == 0.0
    test_normals = [image for category in ("plate", "stripes") for image in _images(products, category)[:3]]
    assert _unknown_share(int8_xml, test_normals) <= max(_unknown_share(fp32_xml, test_normals), 0.01)
    # The unknown product is still unknown.
    unknown_product = _images(products, "checker", subset="train")
    assert _unknown_share(int8_xml, unknown_product) == 1.0
    # The feature reader was a copy: the IR keeps anomalib's outputs, and anomalib's inferencer reads it as before.
    fp32_outputs = [output.get_any_name() for output in ov.Core().read_model(str(fp32_xml)).outputs]
    assert [output.get_any_name() for output in ov.Core().read_model(str(int8_xml)).outputs] == fp32_outputs
    monkeypatch.chdir(tmp_path)  # anomalib's inferencer writes ./openvino_cache
    inferencer = OpenVINOInferencer(int8_xml, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
    ir_model = OpenVINOModel(int8_xml, visualizer=False).model
    for image in test_normals + unknown_product:
        expected = ir_model(image).pred_label.numpy().reshape(-1)
        assert np.array_equal(inferencer.predict(image).pred_label.reshape(-1), expected)


def test_int8_export_without_labelled_normals_keeps_recognition_and_says_so(
    trained: tuple[Dcam, Path],
    products: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from anomalib_dcam.deploy import RandomNormalCalibration, export_openvino

    model = copy.deepcopy(trained[0]).eval()
    with caplog.at_level("WARNING", logger="anomalib_dcam.deploy.recognition_limits"):
        xml_path = export_openvino(
            model, tmp_path, (64, 64), "INT8_PTQ", datamodule=RandomNormalCalibration(num_images=4)
        )
    assert np.array_equal(_limits_read_by_recognition(xml_path), model.post_processor.recognizer.distance_limits)
    assert any("unknown-product limits fitted in floating point are kept" in message for message in caplog.messages)


def test_to_openvino_int8_refits_recognition_too(trained: tuple[Dcam, Path], products: Path, tmp_path: Path) -> None:
    """``model.to_openvino`` (so ``anomalib export``) re-fits through the mixin's INT8 step, as export_openvino does."""
    import openvino as ov
    from anomalib.deploy import CompressionType

    from anomalib_dcam.deploy import NormalsCalibration
    from anomalib_dcam.deploy.recognition_limits import read_refitted_limits

    model = copy.deepcopy(trained[0]).eval()
    xml_path = model.to_openvino(
        tmp_path,
        input_size=(64, 64),
        compression_type=CompressionType.INT8_PTQ,
        datamodule=NormalsCalibration(_datamodule(products, ["plate", "stripes"])),
    )
    report = read_refitted_limits(ov.Core().read_model(str(xml_path)))
    assert list(report) == ["plate", "stripes"]
    assert np.array_equal(
        _limits_read_by_recognition(xml_path), np.array([report[name]["limit"] for name in report], dtype=np.float32)
    )
