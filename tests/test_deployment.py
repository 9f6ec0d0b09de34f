# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Edge deployment: OpenVINO export at every precision, INT8 calibration sources, QAT and inference."""

import csv
import importlib.util
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from anomalib.data import ImageBatch, MVTecAD
from anomalib.deploy import CompressionType, OpenVINOInferencer
from anomalib.engine import Engine
from anomalib.metrics import AUROC
from anomalib.models.components import AnomalibModule
from scipy.stats import spearmanr

from anomalib_dcam import Dcam
from anomalib_dcam.deploy import (
    NormalsCalibration,
    OpenVINOModel,
    OpenVINOQuantizationMixin,
    RandomNormalCalibration,
    SyntheticAnomalyCalibration,
    build_calibration_datamodule,
    compile_openvino,
    compress_openvino_model,
    export_openvino,
    openvino_config,
    openvino_inferencer,
    resolve_acq_metric,
    save_openvino,
)
from anomalib_dcam.deploy.calibration import IMAGENET_MEAN, IMAGENET_STD
from anomalib_dcam.deploy.quantization import _validation_function, anomaly_head_ignored_scope, compression_type_from
from anomalib_dcam.models.dcam import DCAM_PAPER_OPTIONS
from conftest import BIN_DIR, subprocess_env

IMAGE_SIZE = 64
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "score_folder_openvino.py"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """A small model on 64 px images runs fastest on one thread, and a busy 2-core machine stays responsive."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _datamodule(root: Path, **kwargs: object) -> MVTecAD:
    return MVTecAD(root=root, category="brick", train_batch_size=8, eval_batch_size=16, num_workers=0, **kwargs)


@pytest.fixture(scope="module")
def deploy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 normal training images and 8 + 8 test images: enough for scores with a real spread."""
    from anomalib_dcam.demo import make_texture_dataset

    root = tmp_path_factory.mktemp("deploy_textures")
    return make_texture_dataset(
        root, ["brick"], image_size=IMAGE_SIZE, num_train=16, num_test_good=8, num_test_defect=8
    )


@pytest.fixture(scope="module")
def trained(deploy_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Dcam, Path]:
    """A Dcam (random ResNet-18 teacher) trained for 10 short epochs, with its checkpoint.

    A random teacher is enough here: its features are a fixed function of the image, the student learns them on
    normal textures, and the test defects score clearly higher (image AUROC well above chance), so rank correlations are
    meaningful.
    """
    # DCAM's training-only attention blocks and terms on, so that deployment is checked to leave them out.
    model = Dcam(
        pre_trained=False,
        pre_processor=Dcam.configure_pre_processor(image_size=(IMAGE_SIZE, IMAGE_SIZE)),
        **DCAM_PAPER_OPTIONS,
    )
    engine = Engine(
        max_epochs=10,
        check_val_every_n_epoch=5,  # the post-processor statistics come from the last epoch's validation
        default_root_dir=tmp_path_factory.mktemp("deploy_fit"),
        logger=False,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    engine.fit(model=model, datamodule=_datamodule(deploy_root))
    (checkpoint,) = Path(engine.trainer.default_root_dir).rglob("*.ckpt")
    return model.eval(), checkpoint


@pytest.fixture(scope="module")
def test_set(deploy_root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    datamodule = _datamodule(deploy_root)
    datamodule.setup()
    batch = next(iter(datamodule.test_dataloader()))
    return batch.image, batch.gt_label


@pytest.fixture(scope="module")
def fp32_xml(trained: tuple[Dcam, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The FP32 IR, through the whole Python export path (the only ONNX export of the fast tests)."""
    return export_openvino(trained[0], tmp_path_factory.mktemp("fp32"), input_size=(IMAGE_SIZE, IMAGE_SIZE))


@pytest.fixture(scope="module")
def large_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 px images, larger than the 64 px the model is exported at."""
    from anomalib_dcam.demo import make_texture_dataset

    return make_texture_dataset(tmp_path_factory.mktemp("large"), ["brick"], 96, num_train=4, num_test_good=2)


@pytest.fixture(scope="module")
def ptq_normals(fp32_xml: Path, trained: tuple[Dcam, Path], deploy_root: Path) -> ov.Model:
    """INT8_PTQ calibrated on the training normals (shared by several tests)."""
    calibration = NormalsCalibration(_datamodule(deploy_root), num_images=16)
    model = ov.Core().read_model(str(fp32_xml))
    return compress_openvino_model(model, "INT8_PTQ", calibration, pre_processor=trained[0].pre_processor)


@pytest.fixture
def fp32_model(fp32_xml: Path) -> ov.Model:
    """A fresh floating-point OpenVINO model to compress (read from the FP32 IR)."""
    return ov.Core().read_model(str(fp32_xml))


def _scores(xml_or_model: Path | ov.Model, images: torch.Tensor, hint: str = "f32") -> dict[str, np.ndarray]:
    compiled = ov.Core().compile_model(xml_or_model, "CPU", openvino_config(hint))
    outputs = compiled(images.numpy())
    return {port.get_any_name(): np.asarray(value) for port, value in outputs.items()}


def _fake_quantize_consumers(model: ov.Model) -> Counter:
    consumers: Counter = Counter()
    for operation in model.get_ops():
        if operation.get_type_name() == "FakeQuantize":
            for target in operation.output(0).get_target_inputs():
                consumers[target.get_node().get_type_name()] += 1
    return consumers


# ----------------------------------------------------------------------------------------------------------------------
# Calibration sources
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "calibration_class", [NormalsCalibration, RandomNormalCalibration, SyntheticAnomalyCalibration]
)
def test_calibration_images_have_the_export_size(texture_root: Path, calibration_class: type) -> None:
    # The data images are 64 px; the export size is 48 x 40.
    calibration = calibration_class(_datamodule(texture_root), image_size=[48, 40], num_images=5)
    calibration.setup()
    images = calibration.calibration_images()
    assert images.shape == (5, 3, 48, 40)
    batch = next(iter(calibration.val_dataloader()))  # where anomalib's own quantization reads calibration data
    assert batch.image.shape == (1, 3, 48, 40)
    assert next(iter(calibration.train_dataloader())).image.shape == (1, 3, 48, 40)
    assert torch.isfinite(images).all()


def test_calibration_sources_differ_and_repeat(texture_root: Path) -> None:
    def images(source: str, **kwargs: object) -> torch.Tensor:
        calibration = build_calibration_datamodule(source, _datamodule(texture_root), image_size=32, **kwargs)
        calibration.setup()
        return calibration.calibration_images()

    normals = images("normals", num_images=8)
    synthetic = images("synthetic_anomalies", num_images=8, anomaly_probability=1.0)
    noise = images("random_normal", num_images=8)
    assert not torch.allclose(normals, synthetic)
    changed = (normals - synthetic).abs().amax(dim=(1, 2, 3)) > 1e-3
    assert changed.all()  # probability 1: every image carries a defect
    assert normals.min() >= 0
    assert synthetic.min() >= 0
    assert synthetic.max() <= 1
    assert torch.equal(noise, images("random_normal", num_images=8))  # seeded
    assert not torch.equal(noise, images("random_normal", num_images=8, seed=1))
    assert torch.equal(synthetic, images("synthetic_anomalies", num_images=8, anomaly_probability=1.0))


def test_random_normal_is_standard_normal_after_the_model_normalisation() -> None:
    calibration = RandomNormalCalibration(image_size=64, num_images=16)
    normalised = (calibration.calibration_images() - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD,
    ).view(1, 3, 1, 1)
    assert normalised.mean().abs() < 0.02
    assert (normalised.std() - 1).abs() < 0.02
    pixel = RandomNormalCalibration(image_size=64, num_images=16, space="pixel").calibration_images()
    assert pixel.mean().abs() < 0.02
    assert (pixel.std() - 1).abs() < 0.02


def test_configure_for_export_fills_only_unset_values() -> None:
    calibration = RandomNormalCalibration(num_images=2)
    calibration.configure_for_export(image_size=(40, 24), mean=[0.5] * 3, std=[0.25] * 3)
    images = calibration.calibration_images()
    assert images.shape == (2, 3, 40, 24)
    assert (images.mean() - 0.5).abs() < 0.05
    assert (images.std() - 0.25).abs() < 0.05
    explicit = RandomNormalCalibration(image_size=16, num_images=1, mean=[0.1] * 3)
    explicit.configure_for_export(image_size=(40, 24), mean=[0.5] * 3)
    assert explicit.image_size == (16, 16)
    assert explicit.mean == (0.1, 0.1, 0.1)


def test_validation_images_are_labelled_and_resized(texture_root: Path) -> None:
    calibration = NormalsCalibration(_datamodule(texture_root), image_size=48)
    calibration.setup()
    batch = next(iter(calibration.test_dataloader()))  # where anomalib's INT8_ACQ validates
    assert batch.image.shape[-2:] == (48, 48)
    assert batch.gt_mask.shape[-2:] == (48, 48)
    assert set(batch.gt_label.tolist()) == {0, 1}


def test_labelled_normals_need_a_unified_datamodule(texture_root: Path) -> None:
    """The normals that re-fit the unknown-product limits of an INT8 export carry their product; none here."""
    assert NormalsCalibration(_datamodule(texture_root)).labelled_normals() is None  # one product, no category column
    assert RandomNormalCalibration(num_images=2).labelled_normals() is None  # no data at all


def test_calibration_options_are_checked(texture_root: Path) -> None:
    with pytest.raises(ValueError, match="NormalsCalibration needs datamodule"):
        NormalsCalibration(None)
    with pytest.raises(ValueError, match=r"space='uniform'.*'normalized', 'pixel'"):
        RandomNormalCalibration(space="uniform")
    with pytest.raises(ValueError, match=r"anomaly_probability=1\.5"):
        SyntheticAnomalyCalibration(_datamodule(texture_root), anomaly_probability=1.5)
    with pytest.raises(ValueError, match=r"image_size=\[1, 2, 3\]"):
        NormalsCalibration(_datamodule(texture_root), image_size=[1, 2, 3])
    with pytest.raises(ValueError, match="calibration source='pixels'"):
        build_calibration_datamodule("pixels")
    with pytest.raises(ValueError, match="needs datamodule=<an anomalib datamodule> for accuracy-controlled"):
        RandomNormalCalibration().validation_dataloader()


# ----------------------------------------------------------------------------------------------------------------------
# Export at every precision
# ----------------------------------------------------------------------------------------------------------------------


def test_fp32_ir_with_f32_hint_matches_eager_torch(trained: tuple[Dcam, Path], fp32_xml: Path, test_set: tuple) -> None:
    images, _ = test_set
    with torch.no_grad():
        eager = trained[0](images)
    outputs = _scores(fp32_xml, images)
    assert np.allclose(outputs["pred_score"].ravel(), eager.pred_score.numpy().ravel(), atol=1e-4)
    assert np.allclose(outputs["anomaly_map"], eager.anomaly_map.numpy(), atol=1e-4)
    assert eager.pred_score.std() > 0.05  # scores differ between images, so the comparison means something


@pytest.mark.parametrize(
    ("compression", "source"),
    [("FP16", None), ("INT8", None), ("INT8_PTQ", "normals"), ("INT8_ACQ", "normals")],
)
def test_every_precision_exports_an_ir_that_loads_and_scores(
    request: pytest.FixtureRequest,
    fp32_model: ov.Model,
    trained: tuple[Dcam, Path],
    deploy_root: Path,
    test_set: tuple,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    compression: str,
    source: str | None,
) -> None:
    if compression == "INT8_PTQ":
        compressed = request.getfixturevalue("ptq_normals")
    else:
        datamodule = build_calibration_datamodule(source, _datamodule(deploy_root), num_images=8) if source else None
        # max_drop=1: accept the first INT8 candidate; this checks the path, not the accuracy search.
        compressed = compress_openvino_model(fp32_model, compression, datamodule, max_drop=1.0)
    xml = save_openvino(compressed, tmp_path, compression_type=compression)
    monkeypatch.chdir(tmp_path)  # OpenVINOInferencer writes its cache to ./openvino_cache
    prediction = openvino_inferencer(xml).predict(test_set[0][0])
    assert prediction.anomaly_map.shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE)
    assert np.isfinite(prediction.pred_score).all()
    assert prediction.pred_label is not None
    student_fp32_bytes = sum(4 * tensor.numel() for tensor in trained[0].model.student_model.state_dict().values())
    # Teacher and student weights are stored in 16 or 8 bits: well under the FP32 size of both.
    assert xml.with_suffix(".bin").stat().st_size < 0.6 * 2 * student_fp32_bytes


def _image_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Image AUROC of ``scores`` against ``labels``, by anomalib's metric."""
    auroc = AUROC(fields=["pred_score", "gt_label"])
    auroc.update(ImageBatch(image=torch.zeros(len(scores), 3, 1, 1), gt_label=labels, pred_score=scores))
    return float(auroc.compute())


@pytest.mark.parametrize("source", ["normals", "synthetic_anomalies", "random_normal"])
def test_int8_scores_follow_fp32(
    request: pytest.FixtureRequest,
    fp32_model: ov.Model,
    trained: tuple[Dcam, Path],
    deploy_root: Path,
    test_set: tuple,
    source: str,
) -> None:
    images, labels = test_set
    with torch.no_grad():
        reference = trained[0](images).pred_score.numpy().ravel()
    if source == "normals":
        quantized = request.getfixturevalue("ptq_normals")
    else:
        calibration = build_calibration_datamodule(source, _datamodule(deploy_root), num_images=16)
        quantized = compress_openvino_model(fp32_model, "INT8_PTQ", calibration, pre_processor=trained[0].pre_processor)
    scores = _scores(quantized, images)["pred_score"].ravel()
    assert spearmanr(scores, reference).statistic >= 0.95
    fp32_auroc, int8_auroc = (
        _image_auroc(torch.from_numpy(reference), labels),
        _image_auroc(torch.from_numpy(scores), labels),
    )
    assert fp32_auroc >= 0.8  # the comparison means something only for a model that detects the defects
    assert int8_auroc >= fp32_auroc - 0.05


def test_int8_keeps_the_anomaly_map_head_in_floating_point(
    ptq_normals: ov.Model,
    fp32_model: ov.Model,
    deploy_root: Path,
) -> None:
    head_kept = ptq_normals
    calibration = NormalsCalibration(_datamodule(deploy_root), num_images=4)
    everything = compress_openvino_model(fp32_model, "INT8_PTQ", calibration, keep_head_fp32=False)
    head_operations = {"ReduceL2", "Power", "Interpolate"}
    assert _fake_quantize_consumers(head_kept)["Convolution"] > 10
    assert not head_operations & set(_fake_quantize_consumers(head_kept))
    # Without the ignored scope NNCF's placement depends on the graph (with the top-k image score it happens to leave
    # the head alone); with it, every L2 normalisation, where the head starts, is in the scope.
    scope = anomaly_head_ignored_scope(fp32_model)
    reduce_l2 = {op.get_friendly_name() for op in fp32_model.get_ops() if op.get_type_name() == "ReduceL2"}
    assert reduce_l2
    assert reduce_l2 <= set(scope.names)
    assert _fake_quantize_consumers(everything)["Convolution"] > 10


def test_quantization_calibrates_larger_data_images_at_the_static_input_size(
    fp32_model: ov.Model,
    large_root: Path,
) -> None:
    # A calibration datamodule without image_size takes the IR's 64 x 64 input size.
    calibration = NormalsCalibration(_datamodule(large_root))
    quantized = compress_openvino_model(fp32_model.clone(), "INT8_PTQ", calibration)
    assert calibration.image_size == (IMAGE_SIZE, IMAGE_SIZE)
    assert _fake_quantize_consumers(quantized)["Convolution"] > 10


def test_mixin_replaces_anomalibs_quantization_steps(
    fp32_model: ov.Model,
    trained: tuple[Dcam, Path],
    large_root: Path,
) -> None:
    assert Dcam.__mro__.index(OpenVINOQuantizationMixin) < Dcam.__mro__.index(AnomalibModule)
    model = Dcam(pre_trained=False, pre_processor=trained[0].pre_processor)
    # anomalib's own dispatcher (called by to_openvino and `anomalib export`) reaches the plugin's steps: a plain
    # datamodule of 96 px images (anomalib feeds them unresized, which a 64 px IR rejects) calibrates at 64 px, and
    # the anomaly-map head stays in floating point.
    quantized = model._compress_ov_model(fp32_model, CompressionType.INT8_PTQ, _datamodule(large_root))
    consumers = _fake_quantize_consumers(quantized)
    assert consumers["Convolution"] > 10
    assert "ReduceL2" not in consumers


def test_anomalibs_own_quantization_step_accepts_a_calibration_datamodule(
    fp32_model: ov.Model,
    deploy_root: Path,
) -> None:
    from anomalib.models.components.base.export_mixin import ExportMixin

    # What `anomalib export --data anomalib_dcam.deploy.<Calibration>` runs for a model without the mixin.
    calibration = SyntheticAnomalyCalibration(_datamodule(deploy_root), image_size=IMAGE_SIZE, num_images=4)
    quantized = ExportMixin._post_training_quantization_ov(fp32_model, calibration)
    assert _fake_quantize_consumers(quantized)["Convolution"] > 10


def test_accuracy_control_resets_its_metric_for_every_candidate() -> None:
    class Port:
        def __init__(self, name: str) -> None:
            self.name = name

        def get_any_name(self) -> str:
            return self.name

    def fake_model(scores: list[float]) -> object:
        return lambda images: {Port("pred_score"): np.array(scores[: len(images)], dtype=np.float32)}

    batch = type(
        "Batch", (), {"image": torch.rand(4, 3, 8, 8), "gt_label": torch.tensor([0, 0, 1, 1]), "gt_mask": None}
    )
    validate = _validation_function(resolve_acq_metric("image_AUROC"), None)
    perfect, per_item = validate(fake_model([0.1, 0.2, 0.8, 0.9]), [batch()])
    inverted, _ = validate(fake_model([0.9, 0.8, 0.2, 0.1]), [batch()])
    assert perfect == 1.0
    assert per_item == [1.0]
    assert inverted == 0.0  # without a reset the first candidate's predictions would still count


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match=r"compression_type='INT4'.*FP32, FP16, INT8, INT8_PTQ, INT8_ACQ"):
        compression_type_from("INT4")
    assert compression_type_from("fp32") is None
    assert compression_type_from("int8_ptq") == CompressionType.INT8_PTQ
    with pytest.raises(ValueError, match="metric='accuracy' is not supported for INT8_ACQ"):
        resolve_acq_metric("accuracy")
    assert resolve_acq_metric("AUPRO").fields == ["anomaly_map", "gt_mask"]
    with pytest.raises(ValueError, match="precision_hint='fp8'"):
        openvino_config("fp8")
    assert openvino_config("default") == {}
    assert openvino_config("f32", "LATENCY", 2) == {
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": 2,
    }


def test_int8_export_needs_calibration_data(trained: tuple[Dcam, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="compression_type=INT8_PTQ needs datamodule"):
        export_openvino(trained[0], tmp_path, input_size=(IMAGE_SIZE, IMAGE_SIZE), compression_type="INT8_PTQ")


# ----------------------------------------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------------------------------------


def test_openvino_inferencer_matches_the_compiled_ir(
    fp32_xml: Path,
    test_set: tuple,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    inferencer = OpenVINOInferencer(fp32_xml, device="CPU", config=openvino_config("f32"))
    image = test_set[0][3]
    prediction = inferencer.predict(image)
    direct = _scores(fp32_xml, image[None])
    assert np.allclose(prediction.pred_score, direct["pred_score"], atol=1e-6)
    assert compile_openvino(fp32_xml).input(0).get_any_name() == "input"


def test_example_scores_a_folder(
    fp32_xml: Path,
    deploy_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = importlib.util.spec_from_file_location("score_folder_openvino", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.chdir(tmp_path)
    images = deploy_root / "brick" / "test"
    assert example.main(["--model", str(fp32_xml), "--images", str(images), "--output", "scores"]) == 0
    with (tmp_path / "scores" / "scores.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 16
    defect = [float(row["pred_score"]) for row in rows if row["image"].startswith("defect/")]
    good = [float(row["pred_score"]) for row in rows if row["image"].startswith("good/")]
    assert np.mean(defect) > np.mean(good)
    assert len(list((tmp_path / "scores" / "heatmaps").rglob("*.png"))) == 16


def _engine(root_dir: Path) -> Engine:
    return Engine(default_root_dir=root_dir, logger=False, accelerator="cpu", enable_progress_bar=False)


def _predicted_scores(predictions: list[ImageBatch]) -> dict[str, tuple[float, bool]]:
    return {
        Path(path).name: (float(score), bool(label))
        for batch in predictions
        for path, score, label in zip(
            batch.image_path, batch.pred_score.reshape(-1), batch.pred_label.reshape(-1), strict=True
        )
    }


def test_openvino_model_predicts_like_the_torch_model_at_any_image_size(
    trained: tuple[Dcam, Path],
    fp32_xml: Path,
    large_root: Path,
    tmp_path: Path,
) -> None:
    """The 64 px IR scores 96 px images as the PyTorch model does: resized by the wrapper, then the exported graph."""
    images = large_root / "brick" / "train" / "good"
    ir_model = OpenVINOModel(fp32_xml)
    assert ir_model.ir_input_size == (IMAGE_SIZE, IMAGE_SIZE)
    ir_predictions = _engine(tmp_path / "ir").predict(ir_model, data_path=images)
    torch_predictions = _engine(tmp_path / "torch").predict(trained[0], data_path=images)
    ir_scores, torch_scores = _predicted_scores(ir_predictions), _predicted_scores(torch_predictions)
    assert len(ir_scores) == 4
    assert ir_scores.keys() == torch_scores.keys()
    assert np.allclose(
        [ir_scores[name][0] for name in ir_scores], [torch_scores[name][0] for name in ir_scores], atol=1e-4
    )
    assert all(
        ir_scores[name][1] == torch_scores[name][1] for name in ir_scores if abs(ir_scores[name][0] - 0.5) > 1e-4
    )
    batch = ir_predictions[0]
    assert batch.anomaly_map.shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE)
    assert batch.pred_label.dtype == torch.bool
    assert batch.pred_mask.dtype == torch.bool
    # The visualiser of anomalib wrote one picture per image under the run folder.
    assert len(list((tmp_path / "ir").rglob("images/**/*.png"))) == 4


def test_openvino_model_tests_like_the_torch_model(
    trained: tuple[Dcam, Path],
    ptq_normals: ov.Model,
    fp32_xml: Path,
    deploy_root: Path,
    tmp_path: Path,
) -> None:
    """``Engine.test`` on the IR gives the metrics of the PyTorch model (FP32) and scores an INT8 IR as well."""
    int8_xml = save_openvino(ptq_normals, tmp_path / "int8")
    results = {}
    for name, model in {
        "torch": trained[0],
        "fp32": OpenVINOModel(fp32_xml, visualizer=False),
        "int8": OpenVINOModel(int8_xml, visualizer=False),
    }.items():
        (results[name],) = _engine(tmp_path / name).test(model, datamodule=_datamodule(deploy_root))
    # Not F1: the adaptive threshold equals the score of a validation image that is also a test image, so that image's
    # label depends on the last bit of a score computed in another order.
    for metric in ("image_AUROC", "pixel_AUROC"):
        assert results["fp32"][metric] == pytest.approx(results["torch"][metric], abs=1e-4)
    assert results["int8"]["image_AUROC"] >= results["fp32"]["image_AUROC"] - 0.1


def test_openvino_model_dynamic_input_is_not_resized(trained: tuple[Dcam, Path], tmp_path: Path) -> None:
    xml = export_openvino(trained[0], tmp_path / "dynamic")
    model = OpenVINOModel(xml)
    assert model.ir_input_size is None
    assert model.pre_processor is None
    images = torch.rand(2, 3, 48, 40)
    prediction = model(images)
    # The exported graph resizes to the model's 64 px itself.
    assert prediction.anomaly_map.shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE)
    assert np.allclose(prediction.pred_score.numpy(), _scores(xml, images)["pred_score"], atol=1e-6)


def test_openvino_model_checks_its_input(trained: tuple[Dcam, Path], fp32_xml: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"path=.*model\.ckpt.*\.xml"):
        OpenVINOModel(trained[1])
    with pytest.raises(FileNotFoundError, match=r"path=.*missing\.xml.*does not exist"):
        OpenVINOModel(tmp_path / "missing.xml")
    lonely = tmp_path / "lonely.xml"
    lonely.write_text(fp32_xml.read_text())
    with pytest.raises(FileNotFoundError, match=r"lonely\.bin"):
        OpenVINOModel(lonely)
    with pytest.raises(ValueError, match="precision_hint='f64'"):
        OpenVINOModel(fp32_xml, precision_hint="f64")
    model = OpenVINOModel(fp32_xml, visualizer=False)
    with pytest.raises(RuntimeError, match="cannot be trained"):
        model.training_step(None, 0)
    with pytest.raises(ValueError, match="do not pass --ckpt_path"):
        model.load_state_dict(trained[0].state_dict())


# ----------------------------------------------------------------------------------------------------------------------
# Command line and quantization-aware training (slow)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_anomalib_export_calibrates_with_a_plugin_datamodule(
    trained: tuple[Dcam, Path],
    deploy_root: Path,
    tmp_path: Path,
) -> None:
    command = [str(BIN_DIR / "anomalib"), "export", "--model", "Dcam", "--export_type", "openvino"]
    command += ["--ckpt_path", str(trained[1]), "--input_size", "[48,48]", "--compression_type", "INT8_PTQ"]
    command += ["--data", "anomalib_dcam.deploy.SyntheticAnomalyCalibration", "--data.num_images", "8"]
    command += ["--data.datamodule", "MVTecAD", "--data.datamodule.root", str(deploy_root)]
    command += ["--data.datamodule.category", "brick", "--data.datamodule.num_workers", "0"]
    # Without the mixin in Dcam's bases anomalib's own step calibrates, which needs the size spelled out.
    command += ["--data.image_size", "[48,48]", "--default_root_dir", "exported"]
    env = subprocess_env(OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    xml = tmp_path / "exported" / "weights" / "openvino" / "model.xml"
    model = ov.Core().read_model(str(xml))
    assert any(operation.get_type_name() == "FakeQuantize" for operation in model.get_ops())
    assert np.isfinite(_scores(xml, torch.rand(2, 3, 48, 48))["pred_score"]).all()


@pytest.mark.slow
def test_anomalib_predict_runs_an_exported_ir(fp32_xml: Path, large_root: Path, tmp_path: Path) -> None:
    images = large_root / "brick" / "train" / "good"
    command = [str(BIN_DIR / "anomalib"), "predict", "--model", "anomalib_dcam.deploy.OpenVINOModel"]
    command += ["--model.path", str(fp32_xml), "--data", str(images), "--default_root_dir", "predicted"]
    env = subprocess_env(OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    pictures = sorted(path.name for path in (tmp_path / "predicted").rglob("images/**/*.png"))
    assert pictures == sorted(path.name for path in images.iterdir())


@pytest.mark.slow
def test_qat_fine_tunes_and_exports_an_int8_ir(
    trained: tuple[Dcam, Path],
    deploy_root: Path,
    test_set: tuple,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One QAT epoch (two steps) through the command-line entry point; the first run also builds NNCF's extension."""
    from anomalib_dcam.deploy import qat

    arguments = ["--ckpt_path", str(trained[1]), "--data", "MVTecAD", "--data.root", str(deploy_root)]
    arguments += ["--data.category", "brick", "--data.num_workers", "0", "--data.train_batch_size", "8"]
    arguments += ["--epochs", "1", "--num_calibration_images", "4", "--output", str(tmp_path / "qat")]
    assert qat.main(arguments) == 0
    xml = tmp_path / "qat" / "weights" / "openvino" / "model.xml"
    model = ov.Core().read_model(str(xml))
    assert [port.get_any_name() for port in model.outputs] == ["pred_score", "pred_label", "anomaly_map", "pred_mask"]
    assert sum(operation.get_type_name() == "FakeQuantize" for operation in model.get_ops()) > 10
    monkeypatch.chdir(tmp_path)
    inferencer = openvino_inferencer(xml)
    scores = [float(inferencer.predict(image).pred_score.ravel()[0]) for image in test_set[0]]
    assert np.isfinite(scores).all()
    assert np.std(scores) > 0.01


def test_qat_quantizes_the_teacher_only_when_asked(trained: tuple[Dcam, Path], deploy_root: Path) -> None:
    from anomalib_dcam.deploy.qat import prepare_qat

    def quantizer_keys(module: torch.nn.Module) -> list[str]:
        return [key for key in module.state_dict() if "nncf" in key]

    for scope, teacher_quantized in (("student", False), ("all", True)):
        model = Dcam.load_from_checkpoint(trained[1])
        prepare_qat(model, NormalsCalibration(_datamodule(deploy_root), num_images=2), scope=scope)
        assert quantizer_keys(model.model.student_model)
        assert bool(quantizer_keys(model.model.teacher_model)) is teacher_quantized
        assert not any(parameter.requires_grad for parameter in model.model.teacher_model.parameters())
        assert len(model.model.attention) == 3  # the training-only blocks are still there for fine-tuning
