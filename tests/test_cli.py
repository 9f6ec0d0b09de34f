# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""The real ``anomalib`` console script with the plugin installed: train, export, name resolution, errors."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BIN_DIR, subprocess_env

pytestmark = pytest.mark.slow


def _run(arguments: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        arguments,
        cwd=cwd,
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def _anomalib(*arguments: str) -> list[str]:
    return [str(BIN_DIR / "anomalib"), *arguments]


def test_train_then_export_with_the_short_name(texture_root: Path, tmp_path: Path) -> None:
    data = ["--data", "MVTecAD", "--data.root", str(texture_root), "--data.category", "brick"]
    data += ["--data.num_workers", "0", "--data.train_batch_size", "4", "--data.eval_batch_size", "4"]
    train = _run(
        _anomalib("train", "--model", "Dcam", "--model.pre_trained", "false", *data, "--trainer.max_epochs", "1")
        + ["--default_root_dir", "results"],
        cwd=tmp_path,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert "image_AUROC" in train.stdout + train.stderr
    (checkpoint,) = (tmp_path / "results").rglob("*.ckpt")

    # No --model.pre_trained false here: a model restored from a checkpoint needs no ImageNet weights (offline).
    export = _run(
        _anomalib("export", "--model", "Dcam", "--export_type", "openvino", "--ckpt_path", str(checkpoint))
        + ["--input_size", "[64,64]", "--default_root_dir", "exported"],
        cwd=tmp_path,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    xml = tmp_path / "exported" / "weights" / "openvino" / "model.xml"
    assert xml.is_file()
    assert xml.with_suffix(".bin").stat().st_size > 1_000_000


def test_full_class_path_and_yaml_resolve_to_dcam(tmp_path: Path) -> None:
    config = tmp_path / "dcam.yaml"
    config.write_text(
        "model:\n  class_path: anomalib_dcam.Dcam\n  init_args:\n    attention: cbam\n    pre_trained: false\n"
        "data:\n  class_path: anomalib.data.MVTecAD\n  init_args:\n    root: ./datasets/MVTecAD\n",
    )
    for arguments in (["--model", "anomalib_dcam.Dcam"], ["--config", str(config)]):
        result = _run(_anomalib("train", *arguments, "--data", "MVTecAD", "--print_config"), cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "class_path: anomalib_dcam.Dcam" in result.stdout
    assert re.search(r"attention: (cbam|CBAM)\n", result.stdout)


def test_get_model_and_start_up_hook(tmp_path: Path) -> None:
    code = (
        "import sys; before = sorted(m for m in sys.modules if m.startswith(('anomalib', 'torch')));"
        "from anomalib.models import get_model; import anomalib.models;"
        "model = get_model('Dcam', pre_trained=False); print(before); print(type(model).__module__);"
        "print(anomalib.models.Dcam is type(model))"
    )
    result = _run([sys.executable, "-c", code], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded_at_start, module, exposed = result.stdout.strip().splitlines()[-3:]
    # The start-up hook imports nothing at all until anomalib.models is imported.
    assert loaded_at_start == "[]"
    assert module == "anomalib_dcam.models.dcam.lightning_model"
    assert exposed == "True"

    switched_off = _run([sys.executable, "-c", code], cwd=tmp_path, ANOMALIB_DCAM_AUTOLOAD="0")
    assert switched_off.returncode != 0
    assert "UnknownModelError" in switched_off.stderr


def test_bad_option_is_reported_before_training(tmp_path: Path) -> None:
    result = _run(
        _anomalib("train", "--model", "Dcam", "--model.attention", "transformer", "--data", "MVTecAD")
        + ["--data.root", str(tmp_path / "nowhere")],
        cwd=tmp_path,
    )
    assert result.returncode != 0
    output = " ".join((result.stdout + result.stderr).split())  # rich wraps long lines
    assert "attention='transformer' is not supported" in output
    assert "'channel', 'spatial', 'cbam', 'none'" in output
