# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Records that store the fully resolved settings and are reused only for exactly those settings."""

import hashlib
import json
import logging
from pathlib import Path

import pytest

from anomalib_dcam import Dcam
from anomalib_dcam.benchmark.records import (
    file_digest,
    load_matching,
    run_settings,
    settings_difference,
    write_record,
)
from anomalib_dcam.data import MultiClassMVTec

TRAINER = {"max_epochs": 5, "accelerator": "cpu", "precision": "32-true"}


def _settings(texture_root: Path, seed: int = 0, **dcam_options: object) -> dict:
    model = Dcam(backbone="resnet18", pre_trained=False, **dcam_options)
    datamodule = MultiClassMVTec(root=texture_root, num_workers=0, seed=seed)
    return run_settings(model, datamodule, TRAINER, seed, run="dcam_default")


def test_settings_are_resolved_after_defaults(texture_root: Path) -> None:
    settings = _settings(texture_root)
    model = settings["model"]
    assert model["class_path"] == "anomalib_dcam.models.dcam.lightning_model.Dcam"
    # Every constructor argument, the ones left at their defaults included, as plain JSON values.
    assert model["init_args"]["lr"] == 0.1
    assert model["init_args"]["synthetic_anomaly_blend"] == [0.2, 1.0]
    assert model["init_args"]["attention"] == "none"
    assert settings["post_processor"]["class_path"].endswith("CategoryPostProcessor")
    datamodule = settings["datamodule"]["init_args"]
    assert datamodule["train_batch_size"] == 32
    assert datamodule["val_split_mode"] == "synthetic"
    assert settings["trainer"] == TRAINER
    assert settings["seed"] == 0
    assert settings["environment"]["packages"]["anomalib"].startswith("2.")
    assert json.loads(json.dumps(settings)) == settings


def test_record_is_reused_only_with_the_same_settings(
    texture_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "records" / "dcam_default.json"
    settings = _settings(texture_root)
    record = write_record(path, settings, results=[{"category": "brick", "image_AUROC": 0.9}], fit_seconds=1.0)
    assert record["provenance"]["commit"] is None or len(record["provenance"]["commit"]) == 40
    assert isinstance(record["provenance"]["dirty"], bool | None)

    # The same settings, rebuilt from new objects: reused.
    reused = load_matching(path, _settings(texture_root))
    assert reused is not None
    assert reused["results"] == [{"category": "brick", "image_AUROC": 0.9}]

    # A changed default (here: the same run name with another synthetic-defect probability), or another seed: due.
    changed = _settings(texture_root, synthetic_anomaly_probability=0.25)
    with caplog.at_level(logging.WARNING):
        assert load_matching(path, changed) is None
    assert "model.init_args.synthetic_anomaly_probability: 0.5 -> 0.25" in caplog.text
    assert load_matching(path, _settings(texture_root, seed=1)) is None
    assert "seed: 0 -> 1" in settings_difference(settings, _settings(texture_root, seed=1))


def test_a_record_without_settings_is_not_reused(tmp_path: Path, texture_root: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps([{"category": "brick", "image_AUROC": 0.9}]))  # the rows-only format of older records
    assert load_matching(path, _settings(texture_root)) is None
    assert load_matching(tmp_path / "missing.json", _settings(texture_root)) is None


def test_file_digest_follows_the_bytes_of_every_file(tmp_path: Path) -> None:
    first, second = tmp_path / "model.xml", tmp_path / "model.bin"
    first.write_bytes(b"graph")
    second.write_bytes(b"weights" * 200_000)  # more than one read chunk
    digest = file_digest(first, second)
    assert digest == hashlib.sha256(b"graph" + b"weights" * 200_000).hexdigest()
    second.write_bytes(b"weights" * 199_999 + b"weighTs")
    assert file_digest(first, second) != digest
