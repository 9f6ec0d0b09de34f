# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""DcamModel and Dcam: shapes, attention placement, options, errors, reduction to STFPM."""

from unittest import mock

import pytest
import torch
from anomalib.data import InferenceBatch
from anomalib.models.components import TimmFeatureExtractor
from anomalib.models.image import Stfpm

from anomalib_dcam import Dcam
from anomalib_dcam.models.dcam import DCAM_PAPER_OPTIONS, AttentionType, DcamModel, DcamTrainOutput, ImageScore
from conftest import requires_lite0

IMAGE_SIZE = 64


def _images(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_train_mode_returns_features_and_masks() -> None:
    model = DcamModel(pre_trained=False, attention="channel").train()
    output = model(_images())
    assert isinstance(output, DcamTrainOutput)
    assert model.layers == ["layer1", "layer2", "layer3"]
    expected = {"layer1": (2, 64, 16, 16), "layer2": (2, 128, 8, 8), "layer3": (2, 256, 4, 4)}
    assert {level: tuple(value.shape) for level, value in output.teacher_features.items()} == expected
    assert {level: tuple(value.shape) for level, value in output.student_features.items()} == expected
    assert {level: tuple(mask.shape) for level, mask in output.masks.items()} == {
        "layer1": (2, 64, 1, 1),
        "layer2": (2, 128, 1, 1),
        "layer3": (2, 256, 1, 1),
    }


def test_eval_mode_returns_inference_batch() -> None:
    model = DcamModel(pre_trained=False, image_score_top_fraction=0.0).eval()
    output = model(_images(3))
    assert isinstance(output, InferenceBatch)
    assert output.anomaly_map.shape == (3, 1, IMAGE_SIZE, IMAGE_SIZE)
    assert output.pred_score.shape == (3, 1)
    assert torch.allclose(output.pred_score.flatten(), output.anomaly_map.flatten(1).amax(dim=1))
    assert torch.all(output.anomaly_map >= 0)


@pytest.mark.parametrize("placement", ["side", "inline"])
@pytest.mark.parametrize("attention", ["channel", "spatial", "cbam"])
def test_attention_is_not_called_at_inference(attention: str, placement: str) -> None:
    model = DcamModel(pre_trained=False, attention=attention, attention_placement=placement)
    calls = []
    for block in model.attention.values():
        block.register_forward_hook(lambda *_: calls.append(1))
    model.train()(_images())
    assert len(calls) == 3  # one block per level while training
    calls.clear()
    model.eval()
    images = _images()
    with torch.no_grad():
        scores = model(images).anomaly_map
        with model.without_attention():
            assert len(model.attention) == 0
            scores_without = model(images).anomaly_map
    assert calls == []
    assert torch.equal(scores, scores_without)
    assert len(model.attention) == 3  # restored after the context


def test_side_placement_leaves_the_student_untouched() -> None:
    model = DcamModel(pre_trained=False, attention="channel", attention_placement="side").train()
    images = _images()
    output = model(images)
    raw = model.student_model(images)
    for level, mask in output.masks.items():
        assert torch.allclose(output.student_features[level], raw[level] * mask)


def test_inline_placement_feeds_masked_features_to_the_next_stage() -> None:
    model = DcamModel(pre_trained=False, attention="channel", attention_placement="inline").train()
    received = {}
    model.student_model.feature_extractor.layer2.register_forward_pre_hook(
        lambda _module, inputs: received.update(layer2_input=inputs[0]),
    )
    output = model(_images())
    assert torch.equal(received["layer2_input"], output.student_features["layer1"])
    # The student's layer1 output was masked: dividing the mask out recovers a different tensor.
    assert not torch.allclose(output.student_features["layer1"] / output.masks["layer1"], received["layer2_input"])


def test_mask_teacher_applies_the_student_mask_to_the_teacher() -> None:
    images = _images()
    model = DcamModel(pre_trained=False, attention="spatial", mask_teacher=True).train()
    output = model(images)
    teacher = model.teacher_model(images)
    for level, mask in output.masks.items():
        assert torch.allclose(output.teacher_features[level], teacher[level] * mask)


def test_teacher_is_frozen_and_optimizer_sees_student_and_attention() -> None:
    model = Dcam(pre_trained=False, attention="cbam")
    assert not any(parameter.requires_grad for parameter in model.model.teacher_model.parameters())
    optimizer = model.configure_optimizers()
    optimized = {id(parameter) for group in optimizer.param_groups for parameter in group["params"]}
    expected = {id(p) for p in [*model.model.student_model.parameters(), *model.model.attention.parameters()]}
    assert optimized == expected
    assert optimizer.defaults["lr"] == 0.1
    assert optimizer.defaults["momentum"] == 0.9
    assert optimizer.defaults["weight_decay"] == 1e-3


def test_defaults_train_stfpms_student_without_attention_blocks_or_extra_terms() -> None:
    model = Dcam(pre_trained=False)
    assert model.model.attention_type is AttentionType.NONE
    assert len(model.model.attention) == 0
    assert (model.loss.pixel_weight, model.loss.channel_weight, model.loss.kd_weight) == (1.0, 0.0, 0.0)
    assert model.configure_optimizers().defaults["weight_decay"] == 1e-3
    # DCAM's attention model is one option away.
    dcam = Dcam(pre_trained=False, **DCAM_PAPER_OPTIONS)
    assert len(dcam.model.attention) == 3
    assert (dcam.loss.channel_weight, dcam.loss.kd_weight) == (1.0, 1.0)
    assert dcam.configure_optimizers().defaults["weight_decay"] == 1e-4


@pytest.mark.parametrize("combine", ["sum", "product"])
def test_combine_modes(combine: str) -> None:
    model = DcamModel(pre_trained=False, anomaly_map_combine=combine).eval()
    images = _images()
    with torch.no_grad():
        output = model(images)
        teacher, student = model.teacher_model(images), model.student_model(images)
    maps = [
        model.anomaly_map_generator.compute_layer_map(teacher[level], student[level], (IMAGE_SIZE, IMAGE_SIZE))
        for level in model.layers
    ]
    expected = maps[0] + maps[1] + maps[2] if combine == "sum" else maps[0] * maps[1] * maps[2]
    assert torch.allclose(output.anomaly_map, expected, atol=1e-7)


def test_gaussian_smoothing_smooths() -> None:
    plain = DcamModel(pre_trained=False).eval()
    smooth = DcamModel(pre_trained=False, anomaly_map_sigma=2.0).eval()
    smooth.load_state_dict(plain.state_dict(), strict=False)  # the blur kernel is the only extra buffer
    images = _images()
    with torch.no_grad():
        rough_map, smooth_map = plain(images).anomaly_map, smooth(images).anomaly_map
    total_variation = lambda x: (x[..., 1:, :] - x[..., :-1, :]).abs().mean()  # noqa: E731
    assert total_variation(smooth_map) < total_variation(rough_map)


@requires_lite0
def test_default_pyramid_of_efficientnet_and_packaged_weights() -> None:
    from anomalib_dcam.weights import packaged_lite0_state_dict

    model = DcamModel(backbone="tf_efficientnet_lite0")
    assert model.layers == ["blocks.1", "blocks.2", "blocks.4"]  # strides 4, 8, 16
    packaged = packaged_lite0_state_dict()
    teacher = model.teacher_model.feature_extractor.state_dict()
    assert torch.equal(teacher["conv_stem.weight"], packaged["conv_stem.weight"])
    assert torch.equal(teacher["blocks.4.0.conv_pw.weight"], packaged["blocks.4.0.conv_pw.weight"])
    # The student starts from random weights.
    student = model.student_model.feature_extractor.state_dict()
    assert not torch.equal(student["conv_stem.weight"], packaged["conv_stem.weight"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attention": "transformer"}, "attention='transformer'.*'channel', 'spatial', 'cbam', 'none'"),
        ({"attention_placement": "middle"}, "attention_placement='middle'.*'side', 'inline'"),
        ({"anomaly_map_combine": "max"}, "anomaly_map_combine='max'.*'sum', 'product'"),
        ({"layers": ["layer1", "layer9"]}, r"layers=.*layer9.*accepted layer names are \['act1', 'layer1'"),
        ({"layers": []}, "layers=.*non-empty"),
        ({"temperature": -1.0}, "temperature=-1.0"),
        ({"kd_weight": -0.5}, "kd_weight=-0.5"),
        ({"anomaly_map_sigma": -1.0}, "anomaly_map_sigma"),
        ({"lr": 0.0}, "lr=0.0"),
        ({"attention_reduction": 0}, "attention_reduction=0"),
        ({"backbone": "no_such_net"}, "backbone='no_such_net'"),
    ],
)
def test_bad_options_fail_before_training_with_a_clear_message(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Dcam(pre_trained=False, **kwargs)


def test_enum_members_and_case_are_accepted() -> None:
    from anomalib_dcam.models.dcam import AttentionType, CombineMode

    model = Dcam(pre_trained=False, attention=AttentionType.CBAM, anomaly_map_combine="PRODUCT")
    assert model.model.attention_type is AttentionType.CBAM
    assert model.model.anomaly_map_generator.combine is CombineMode.PRODUCT


def _stfpm_with_random_teacher() -> Stfpm:
    """Anomalib's Stfpm, built without hub weights (its teacher is random, as Dcam's is here)."""

    def random_extractor(**kwargs: object) -> TimmFeatureExtractor:
        return TimmFeatureExtractor(**{**kwargs, "pre_trained": False})

    with mock.patch("anomalib.models.image.stfpm.torch_model.TimmFeatureExtractor", random_extractor):
        return Stfpm(backbone="resnet18")


def test_reduces_to_stfpm_on_the_same_weights_and_inputs() -> None:
    """attention='none', pixel term only and the product map: the same loss, map, scores and training step."""
    stfpm = _stfpm_with_random_teacher()
    dcam = Dcam(
        pre_trained=False,
        attention="none",
        pixel_weight=1.0,
        channel_weight=0.0,
        kd_weight=0.0,
        anomaly_map_combine="product",
        synthetic_anomaly_probability=0.0,
        image_score_top_fraction=0.0,  # STFPM's image score: the map's maximum
        lr=0.4,  # anomalib Stfpm's hard-coded optimizer settings
        weight_decay=0.001,
    )
    dcam.model.load_state_dict(stfpm.model.state_dict())
    images = _images(4)

    stfpm.model.train()
    dcam.model.train()
    stfpm_loss = stfpm.loss(*stfpm.model(images))
    dcam_output = dcam.model(images)
    dcam_loss = dcam.loss(dcam_output.teacher_features, dcam_output.student_features).total
    assert dcam_loss.item() == pytest.approx(stfpm_loss.item(), rel=1e-6)

    # One optimizer step each leaves the two students identical.
    for module, loss in ((stfpm, stfpm_loss), (dcam, dcam_loss)):
        optimizer = module.configure_optimizers()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for (name, stfpm_parameter), dcam_parameter in zip(
        stfpm.model.student_model.named_parameters(), dcam.model.student_model.parameters(), strict=True
    ):
        assert torch.allclose(stfpm_parameter, dcam_parameter, atol=1e-6), name

    stfpm.model.eval()
    dcam.model.eval()
    with torch.no_grad():
        stfpm_output, dcam_eval = stfpm.model(images), dcam.model(images)
    assert torch.allclose(dcam_eval.anomaly_map, stfpm_output.anomaly_map, rtol=1e-5, atol=1e-8)
    assert torch.allclose(dcam_eval.pred_score, stfpm_output.pred_score, rtol=1e-5, atol=1e-8)


def test_image_score_is_the_max_by_default_and_the_mean_of_the_top_pixels_otherwise() -> None:
    anomaly_map = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ImageScore()(anomaly_map), torch.amax(anomaly_map, dim=(-2, -1)))
    assert torch.allclose(ImageScore(top_fraction=1.0)(anomaly_map), anomaly_map.mean(dim=(-2, -1)))
    # 0.05 of 64 pixels rounds to the 3 highest.
    expected = anomaly_map.flatten(1).sort(dim=1, descending=True).values[:, :3].mean(dim=1, keepdim=True)
    assert torch.allclose(ImageScore(top_fraction=0.05)(anomaly_map), expected)
    # A fraction smaller than one pixel still reads one: the maximum.
    assert torch.equal(ImageScore(top_fraction=1e-6)(anomaly_map), torch.amax(anomaly_map, dim=(-2, -1)))


def test_image_score_option_reaches_the_model_and_its_prediction() -> None:
    model = DcamModel(pre_trained=False, image_score_top_fraction=0.01).eval()
    with torch.no_grad():
        output = model(_images())
    expected = output.anomaly_map.flatten(1).topk(round(0.01 * IMAGE_SIZE**2), dim=1).values.mean(dim=1)
    assert torch.allclose(output.pred_score.flatten(), expected)
    assert output.pred_score.shape == torch.amax(output.anomaly_map, dim=(-2, -1)).shape


@pytest.mark.parametrize("value", [-0.1, 1.5, True, "0.01"])
def test_bad_image_score_fraction_names_the_option(value: object) -> None:
    with pytest.raises(ValueError, match=r"image_score_top_fraction=.*\[0, 1\]"):
        Dcam(pre_trained=False, image_score_top_fraction=value)


def test_stfpm_options_with_the_teacher_cache_train_like_anomalibs_stfpm(texture_root, tmp_path) -> None:
    """``Dcam(**STFPM_OPTIONS)`` with the cache: Stfpm's loss on the same batches, Stfpm's weights after training."""
    from anomalib.pre_processing import PreProcessor
    from lightning.pytorch import Callback
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    from anomalib_dcam.data import MultiClassMVTec
    from anomalib_dcam.models.dcam import STFPM_OPTIONS
    from conftest import quiet_engine

    def pre_processor() -> PreProcessor:
        transform = Compose([Resize((32, 32), antialias=True), Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
        return PreProcessor(transform=transform)

    class BatchLosses(Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_train_batch_end(
            self, trainer: object, pl_module: object, outputs: dict, batch: object, batch_idx: int
        ) -> None:
            self.losses.append(float(outputs["loss"]))

    def random_extractor(**kwargs: object) -> TimmFeatureExtractor:
        return TimmFeatureExtractor(**{**kwargs, "pre_trained": False})

    with mock.patch("anomalib.models.image.stfpm.torch_model.TimmFeatureExtractor", random_extractor):
        stfpm = Stfpm(backbone="resnet18", pre_processor=pre_processor())
    # Stfpm trains in the plain layout: so does this Dcam, so that the arithmetic is the same to the last bit (the
    # channels-last default changes the loss by float32 rounding only: test_training_speed.py).
    dcam = Dcam(
        pre_trained=False,
        **STFPM_OPTIONS,
        lr=0.4,
        teacher_cache="memory",
        channels_last=False,
        pre_processor=pre_processor(),
    )
    dcam.model.load_state_dict(stfpm.model.state_dict())

    losses = {}
    for name, model in (("stfpm", stfpm), ("dcam", dcam)):
        recorder = BatchLosses()
        datamodule = MultiClassMVTec(root=texture_root, train_batch_size=4, num_workers=0, seed=0)
        # Two epochs: the second reads the teacher's features from the cache.
        engine = quiet_engine(tmp_path / name, epochs=2, callbacks=[recorder], limit_val_batches=0)
        engine.fit(model=model, datamodule=datamodule)
        losses[name] = recorder.losses
    images = len(datamodule.train_data)
    assert dcam.teacher_cache.stats.misses == dcam.teacher_cache.stats.hits == images  # cached once, read once
    assert len(losses["dcam"]) == 2 * -(-images // 4)
    assert losses["dcam"] == pytest.approx(losses["stfpm"], rel=1e-5)
    for (name, stfpm_parameter), dcam_parameter in zip(
        stfpm.model.student_model.named_parameters(), dcam.model.student_model.parameters(), strict=True
    ):
        torch.testing.assert_close(dcam_parameter, stfpm_parameter, rtol=1e-5, atol=1e-6, msg=name)
