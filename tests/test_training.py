# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Training behaviour: loss goes down, image modes, offline weights, checkpoints."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import Folder, MVTecAD
from anomalib.engine import Engine
from PIL import Image

from anomalib_dcam import Dcam
from anomalib_dcam.models.dcam import AttentionType, CombineMode
from anomalib_dcam.weights import BackboneWeightsError
from conftest import quiet_engine, requires_lite0, subprocess_env

IMAGE_SIZE = 64


def _small_dcam(**kwargs: object) -> Dcam:
    pre_processor = Dcam.configure_pre_processor(image_size=(IMAGE_SIZE, IMAGE_SIZE))
    return Dcam(**{"pre_trained": False, "pre_processor": pre_processor, **kwargs})


def _engine(tmp_path: Path, epochs: int = 1) -> Engine:
    return quiet_engine(tmp_path, epochs)


def test_training_lowers_the_loss(texture_root: Path) -> None:
    datamodule = MVTecAD(root=texture_root, category="brick", train_batch_size=8, num_workers=0)
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    model = _small_dcam()
    images = model.pre_processor.transform(batch.image)
    optimizer = model.configure_optimizers()
    model.model.train()
    losses = []
    for _ in range(15):
        output = model.model(images)
        loss = model.loss(output.teacher_features, output.student_features)
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()
        losses.append(loss.total.item())
    assert losses[-1] < 0.8 * losses[0]
    assert all(np.isfinite(losses))


@pytest.mark.parametrize("mode", ["L", "RGBA", "RGB"])
def test_grayscale_and_rgba_images_train_like_rgb(tmp_path: Path, texture_root: Path, mode: str) -> None:
    for split, folder in (("train/good", "good"), ("test/defect", "bad")):
        (tmp_path / folder).mkdir()
        for source in sorted((texture_root / "brick" / split).glob("*.png"))[:6]:
            Image.open(source).convert(mode).save(tmp_path / folder / source.name)
    datamodule = Folder(
        name=f"mode_{mode}",
        root=tmp_path,
        normal_dir="good",
        abnormal_dir="bad",
        train_batch_size=3,
        eval_batch_size=3,
        num_workers=0,
        val_split_mode="same_as_test",
    )
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.image.shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)
    model = _small_dcam()
    engine = _engine(tmp_path)
    engine.fit(model=model, datamodule=datamodule)
    assert engine.trainer.global_step == math.ceil(len(datamodule.train_data) / 3)
    assert torch.isfinite(engine.trainer.callback_metrics["train_loss_epoch"])


def test_empty_image_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "good").mkdir()
    datamodule = Folder(name="empty", root=tmp_path, normal_dir="good", num_workers=0)
    with pytest.raises(RuntimeError, match=r"Found 0 .*images in .*good with extensions \('.jpg'"):
        _engine(tmp_path).fit(model=_small_dcam(), datamodule=datamodule)


def test_missing_weights_file_fails_before_training(tmp_path: Path, texture_root: Path) -> None:
    missing = tmp_path / "nowhere" / "resnet18.pth"
    model = _small_dcam(backbone_weights=missing)
    datamodule = MVTecAD(root=texture_root, category="brick", num_workers=0)
    engine = _engine(tmp_path)
    with pytest.raises(BackboneWeightsError, match=r"backbone_weights=.*resnet18.pth.*no such file"):
        engine.fit(model=model, datamodule=datamodule)
    assert engine.trainer.global_step == 0


def test_weights_from_a_local_file(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    reference = timm.create_model("resnet18", pretrained=False).state_dict()
    torch.save({"state_dict": reference}, tmp_path / "resnet18.pth")
    save_file({k: v.contiguous() for k, v in reference.items()}, str(tmp_path / "resnet18.safetensors"))
    for name in ("resnet18.pth", "resnet18.safetensors"):
        model = Dcam(pre_trained=False, backbone_weights=tmp_path / name)
        model.setup("fit")
        teacher = model.model.teacher_model.feature_extractor.state_dict()
        assert torch.equal(teacher["layer3.1.conv2.weight"], reference["layer3.1.conv2.weight"])

    wrong = timm.create_model("resnet34", pretrained=False).state_dict()
    torch.save(wrong, tmp_path / "resnet34.pth")
    model = Dcam(pre_trained=False, backbone_weights=tmp_path / "resnet34.pth")
    with pytest.raises(BackboneWeightsError, match="do not fit the backbone"):
        model.setup("fit")


def test_hub_weights_missing_offline_is_a_clear_error() -> None:
    model = Dcam(backbone="resnet34")  # no local source for resnet34's ImageNet weights here
    with pytest.raises(BackboneWeightsError, match="backbone_weights=<local timm state dict>"):
        model.setup("fit")


@requires_lite0
def test_hf_cache_install_serves_timm_offline(tmp_path: Path) -> None:
    from anomalib_dcam.weights import install_hf_cache, packaged_lite0_state_dict

    install_hf_cache(tmp_path)
    code = (
        "import timm, torch; m = timm.create_model('tf_efficientnet_lite0', pretrained=True); "
        "torch.save(m.state_dict()['conv_stem.weight'], 'stem.pt')"
    )
    env = subprocess_env(HF_HUB_CACHE=str(tmp_path), HF_HUB_OFFLINE="1")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, timeout=300)
    stem = torch.load(tmp_path / "stem.pt", weights_only=True)
    assert torch.equal(stem, packaged_lite0_state_dict()["conv_stem.weight"])


def test_checkpoint_round_trip_with_weights_only_loading(tmp_path: Path, texture_root: Path) -> None:
    options = {"attention": AttentionType.CBAM, "anomaly_map_combine": CombineMode.PRODUCT, "temperature": 2.0}
    model = _small_dcam(**options)
    datamodule = MVTecAD(root=texture_root, category="brick", train_batch_size=4, eval_batch_size=4, num_workers=0)
    engine = _engine(tmp_path)
    engine.fit(model=model, datamodule=datamodule)
    checkpoint = Path(engine.trainer.checkpoint_callback.best_model_path)
    assert checkpoint.is_file()

    restored = Dcam.load_from_checkpoint(checkpoint)  # weights_only=True by default
    assert restored.model.attention_type is AttentionType.CBAM
    assert restored.loss.temperature == 2.0
    images = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    model.eval()
    restored.eval()
    with torch.no_grad():
        expected, actual = model(images), restored(images)
    assert torch.allclose(expected.pred_score, actual.pred_score)
    assert torch.allclose(expected.anomaly_map, actual.anomaly_map)

    # anomalib's own restore path (Engine.test with ckpt_path) uses weights-only loading as well.
    results = _engine(tmp_path).test(model=_small_dcam(**options), datamodule=datamodule, ckpt_path=checkpoint)
    assert 0.0 <= results[0]["image_AUROC"] <= 1.0
