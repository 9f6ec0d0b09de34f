# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Export to TORCH, ONNX and OpenVINO: parity with eager torch and no attention in the exported model."""

import copy
from pathlib import Path

import numpy as np
import onnx
import openvino as ov
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_dcam import Dcam
from anomalib_dcam.models.dcam import ImageScore

IMAGE_SIZE = 64


def _dcam(attention: str, **kwargs: object) -> Dcam:
    pre_processor = Dcam.configure_pre_processor(image_size=(IMAGE_SIZE, IMAGE_SIZE))
    return Dcam(pre_trained=False, attention=attention, pre_processor=pre_processor, **kwargs)


@pytest.fixture(scope="module")
def trained_dcam(texture_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Dcam:
    """A Dcam with CBAM attention, trained for one epoch so that its post-processor has real statistics.

    Every training-only option is on (denoising distillation with the push-away term, hard-position distillation,
    teacher-feature cache, channels-last, bf16 mixed precision): none of them may change what is exported.
    """
    model = _dcam(
        "cbam",
        synthetic_anomaly_probability=0.5,
        push_weight=1.0,
        hard_fraction=0.25,
        global_weight=1.0,
        teacher_cache="memory",
        channels_last=True,
    )
    datamodule = MVTecAD(root=texture_root, category="brick", train_batch_size=4, eval_batch_size=4, num_workers=0)
    engine = Engine(
        max_epochs=1,
        default_root_dir=tmp_path_factory.mktemp("export_fit"),
        logger=False,
        accelerator="cpu",
        enable_progress_bar=False,
        precision="bf16-mixed",
    )
    engine.fit(model=model, datamodule=datamodule)
    return model.eval()


@pytest.fixture(scope="module")
def test_images() -> torch.Tensor:
    return torch.rand(4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))


def _teacher_student_numel(model: Dcam) -> int:
    return sum(p.numel() for p in [*model.model.teacher_model.parameters(), *model.model.student_model.parameters()])


def test_torch_export_holds_teacher_and_student_only(trained_dcam: Dcam, tmp_path: Path) -> None:
    path = trained_dcam.to_torch(tmp_path)
    exported = torch.load(path, weights_only=False)["model"]
    names = [name for name, _ in exported.named_parameters()]
    assert not any("attention" in name for name in names)
    assert sum(p.numel() for p in exported.parameters()) == _teacher_student_numel(trained_dcam)
    # The live model keeps its attention blocks for further training.
    assert len(trained_dcam.model.attention) == 3
    with torch.no_grad():
        assert torch.equal(
            exported(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)).pred_score,
            trained_dcam(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)).pred_score,
        )


def _initializer_numel(path: Path) -> int:
    model = onnx.load(str(path))
    return sum(int(np.prod(tensor.dims)) for tensor in model.graph.initializer)


def test_onnx_export_has_no_attention_parameters(trained_dcam: Dcam, tmp_path: Path) -> None:
    with_attention = trained_dcam.to_onnx(tmp_path / "cbam", input_size=(IMAGE_SIZE, IMAGE_SIZE))
    without = _dcam("none")
    without.load_state_dict(trained_dcam.state_dict(), strict=False)  # same teacher, student and statistics
    plain = without.eval().to_onnx(tmp_path / "none", input_size=(IMAGE_SIZE, IMAGE_SIZE))
    graph = onnx.load(str(with_attention)).graph
    assert not any("attention" in tensor.name for tensor in graph.initializer)
    assert _initializer_numel(with_attention) == _initializer_numel(plain)
    assert with_attention.stat().st_size == pytest.approx(plain.stat().st_size, rel=0.01)


def test_openvino_f32_matches_eager_torch(trained_dcam: Dcam, test_images: torch.Tensor, tmp_path: Path) -> None:
    xml = trained_dcam.to_openvino(tmp_path, input_size=(IMAGE_SIZE, IMAGE_SIZE))
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    with torch.no_grad():
        eager = trained_dcam(test_images)
    for index in range(test_images.shape[0]):
        result = compiled(test_images[index : index + 1].numpy())
        outputs = {output.get_any_name(): value for output, value in result.items()}
        assert np.allclose(outputs["pred_score"].ravel(), eager.pred_score[index].numpy().ravel(), atol=1e-4)
        assert np.allclose(outputs["anomaly_map"], eager.anomaly_map[index : index + 1].numpy(), atol=1e-4)
    # Scores must differ between images, or the comparison would prove nothing.
    assert eager.pred_score.std() > 1e-3


def test_openvino_parity_with_the_top_pixel_image_score(
    trained_dcam: Dcam, test_images: torch.Tensor, tmp_path: Path
) -> None:
    model = copy.deepcopy(trained_dcam)
    model.model.image_score = ImageScore(top_fraction=0.01)
    xml = model.to_openvino(tmp_path, input_size=(IMAGE_SIZE, IMAGE_SIZE))
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    with torch.no_grad():
        eager = model(test_images)
        maximum = trained_dcam(test_images)
    assert not torch.allclose(eager.pred_score, maximum.pred_score)  # the readout really changed
    for index in range(test_images.shape[0]):
        result = compiled(test_images[index : index + 1].numpy())
        outputs = {output.get_any_name(): value for output, value in result.items()}
        assert np.allclose(outputs["pred_score"].ravel(), eager.pred_score[index].numpy().ravel(), atol=1e-4)
