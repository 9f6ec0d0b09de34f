# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Exact resume of a unified run: the same epochs, the held-out selection kept and the same final weights."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from anomalib_dcam import Dcam
from anomalib_dcam.callbacks import HeldOutNormalCheckpoint
from conftest import quiet_engine
from test_category import _datamodule, _pre_processor, make_product

EPOCHS = 3


class _CrashMidEpoch(Callback):
    """Raise in the middle of epoch ``epoch``, as a failing batch or a killed process would stop a run."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: object, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == 1:
            msg = "simulated crash"
            raise RuntimeError(msg)


def _train(
    products: Path,
    root: Path,
    epochs: int = EPOCHS,
    ckpt_path: Path | None = None,
    crash_at: int | None = None,
) -> tuple[Dcam, HeldOutNormalCheckpoint]:
    seed_everything(0)
    # Dcam's defaults train channels-last with synthetic defects: exact resume covers them as well as the data order
    # and the cache (whose features must come back in the teacher's layout).
    model = Dcam(backbone="resnet18", pre_trained=False, pre_processor=_pre_processor(), teacher_cache="memory")
    assert model.synthetic_anomalies is not None
    checkpoint = HeldOutNormalCheckpoint(save_last=True)
    callbacks = [checkpoint] if crash_at is None else [checkpoint, _CrashMidEpoch(crash_at)]
    engine = quiet_engine(root, epochs, callbacks=callbacks)
    engine.fit(model=model, datamodule=_datamodule(products, ["plate", "stripes"]), ckpt_path=ckpt_path)
    return model, checkpoint


@pytest.fixture(scope="module")
def products(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume") / "line"
    for seed, kind in enumerate(("plate", "stripes")):
        make_product(root, kind, seed)
    return root


def _checkpoints(root: Path) -> Path:
    """The folder where anomalib's engine put the run's checkpoints (under its versioned results folder)."""
    return next(root.rglob("last.ckpt")).parent


@pytest.fixture(scope="module")
def uninterrupted(products: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Dcam, HeldOutNormalCheckpoint]:
    return _train(products, tmp_path_factory.mktemp("uninterrupted"))


def _assert_same_model(model: Dcam, reference: Dcam) -> None:
    # Exact: the training order and the synthetic defects depend only on the seed, the epoch and the batch, and the
    # float16 teacher cache trains on the values it stores, so a resumed run (whose cache starts empty) computes what
    # the uninterrupted one did.
    for (name, value), expected in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=name)


def test_resume_from_last_checkpoint_gives_the_uninterrupted_model(
    products: Path,
    tmp_path: Path,
    uninterrupted: tuple[Dcam, HeldOutNormalCheckpoint],
) -> None:
    reference, reference_checkpoint = uninterrupted
    _train(products, tmp_path / "first", epochs=1)
    last = _checkpoints(tmp_path / "first") / "last.ckpt"
    # anomalib writes a resumed run into a new folder: the selection must carry over anyway.
    model, checkpoint = _train(products, tmp_path / "resumed", ckpt_path=last)
    assert model.current_epoch == reference.current_epoch == EPOCHS
    assert float(checkpoint.best_model_score) == float(reference_checkpoint.best_model_score)
    _assert_same_model(model, reference)


def test_a_run_that_dies_mid_epoch_keeps_its_checkpoints_and_resumes(
    products: Path,
    tmp_path: Path,
    uninterrupted: tuple[Dcam, HeldOutNormalCheckpoint],
) -> None:
    reference, _ = uninterrupted
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(products, tmp_path / "crashed", crash_at=1)
    folder = _checkpoints(tmp_path / "crashed")
    assert (folder / "last.ckpt").is_file()  # the end of epoch 0
    assert any(path.name != "last.ckpt" for path in folder.glob("*.ckpt"))  # the best so far
    assert torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] == 0
    model, _ = _train(products, tmp_path / "resumed", ckpt_path=folder / "last.ckpt")
    _assert_same_model(model, reference)
