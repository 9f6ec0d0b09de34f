# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""DDP on 2 CPU processes (gloo): the per-category report counts every test image once, as one process does."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_multiclass import make_category

ANOMALIB = str(Path(sys.executable).parent / "anomalib")


@pytest.fixture(scope="module")
def odd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three categories of 5 test images each: 15 images, so a 2-process sampler repeats one."""
    root = tmp_path_factory.mktemp("ddp") / "line"
    for seed, name in enumerate("abc"):
        make_category(root, name, train_images=6, good_test_images=2, defect_test_images=3, seed=seed)
    return root


def _anomalib(subcommand: str, root: Path, results: Path, devices: int, *extra: str) -> Path:
    """Run ``anomalib <subcommand>`` on the tiny data; return the run folder (with its per-category report)."""
    command = [
        ANOMALIB, subcommand,
        "--model", "Dcam", "--model.pre_trained", "false", "--model.backbone", "resnet18",
        "--data", "anomalib_dcam.data.MultiClassMVTec", "--data.root", str(root), "--data.categories", "[a,b,c]",
        "--data.num_workers", "0", "--data.train_batch_size", "4", "--data.eval_batch_size", "4",
        "--trainer.accelerator", "cpu", "--trainer.devices", str(devices),
        *(["--trainer.strategy", "ddp"] if devices > 1 else []),
        "--trainer.callbacks+=anomalib_dcam.callbacks.PerCategoryMetrics",
        "--trainer.callbacks.print_table", "false",
        "--default_root_dir", str(results),
        *extra,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return next(results.rglob("per_category_metrics.json")).parent


@pytest.mark.slow
def test_ddp_training_and_test_report_every_image_once(odd_root: Path, tmp_path: Path) -> None:
    # A 2-process training run with the held-out selection, then its test and report.
    trained = _anomalib(
        "train",
        odd_root,
        tmp_path / "train",
        2,
        "--trainer.max_epochs",
        "1",
        "--trainer.callbacks+=anomalib_dcam.callbacks.HeldOutNormalCheckpoint",
    )
    checkpoint = next(path for path in trained.rglob("*.ckpt") if path.name != "last.ckpt")
    two = json.loads((trained / "per_category_metrics.json").read_text())  # tested by 2 processes after fit
    assert {name: row["images"] for name, row in two["per_category"].items()} == {"a": 5, "b": 5, "c": 5}
    assert two["global"]["images"] == 15
    # The selected checkpoint (restored at the end of fit, then tested) tested again by one process: the same report.
    tested = _anomalib("test", odd_root, tmp_path / "test", 1, "--ckpt_path", str(checkpoint))
    one = json.loads((tested / "per_category_metrics.json").read_text())
    for section in ("per_category", "mean", "global"):
        assert _close(one[section], two[section]), section


def _close(expected: dict, actual: dict, tolerance: float = 1e-6) -> bool:
    """Same keys and counts; metric values equal within ``tolerance`` (the processes sum floats in another order)."""
    if expected.keys() != actual.keys():
        return False
    for key, value in expected.items():
        other = actual[key]
        if isinstance(value, dict):
            if not _close(value, other, tolerance):
                return False
        elif isinstance(value, float) and isinstance(other, float):
            if abs(value - other) > tolerance:
                return False
        elif value != other:
            return False
    return True
