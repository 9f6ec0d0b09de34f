# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Model selection on held-out normal images (the DCAM paper's protocol).

A seeded 20 % of the training images (all normal) is held out as the validation set. After every epoch
:class:`HeldOutNormalCheckpoint` computes the mean ``pred_score`` over the held-out normal images, logs it as
``val_mean_normal_score`` and keeps the checkpoint where it is lowest. No test image and no test label is used.

With ``MultiClassMVTec(val_split_mode="synthetic")`` (the datamodule's default) half of the held-out images carry
anomalib's synthetic Perlin anomalies. The selection ignores them; they give the post-processor anomalous scores to
set its thresholds and normalisation range from, which a validation set of normals alone cannot (its threshold
falls on the largest normal score and the normalisation clips most of the anomaly map to 0, which the exported
model keeps).
"""

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from anomalib.callbacks.checkpoint import ModelCheckpoint
from anomalib.data.utils import ValSplitMode
from lightning.pytorch import LightningModule, Trainer

__all__ = ["MONITORED_METRIC", "HeldOutNormalCheckpoint"]

logger = logging.getLogger(__name__)

MONITORED_METRIC = "val_mean_normal_score"
"""Name under which the mean anomaly score of the validation normals is logged."""

TRAINING_SPLIT_MODES = (ValSplitMode.SYNTHETIC, ValSplitMode.FROM_TRAIN)
"""Validation splits drawn from the training images only."""


def _check_milestones(milestones: Sequence[int]) -> tuple[int, ...]:
    values = tuple(milestones)
    if not all(isinstance(value, int) and not isinstance(value, bool) and value > 0 for value in values):
        msg = f"milestones={list(values)!r} is not accepted; give positive whole epoch counts, e.g. [5, 10]."
        raise ValueError(msg)
    return tuple(sorted(set(values)))


class HeldOutNormalCheckpoint(ModelCheckpoint):
    """Keep the checkpoint with the lowest mean anomaly score on held-out normal images.

    anomalib's :class:`~anomalib.callbacks.ModelCheckpoint` (a Lightning ``ModelCheckpoint``) that monitors
    ``val_mean_normal_score`` (the mean raw ``pred_score`` over the normal validation images, logged by this
    callback) with ``mode="min"`` and ``save_top_k=1``. The validation set must come from the training images:
    ``val_split_mode="synthetic"`` (held-out normals, half of them with synthetic anomalies that the selection
    ignores; the default of :class:`anomalib_dcam.data.MultiClassMVTec`) or ``"from_train"`` (held-out normals only).
    The callback raises for a validation set drawn from the test set (``"from_test"``, ``"same_as_test"``), and,
    with plain dataloaders, for any anomalous label, because selecting on those would look at test labels.

    anomalib's ``Engine.train`` (and ``anomalib train``) tests the model that is in memory when fit ends, not the
    best checkpoint. With ``restore_best=True`` the callback loads the selected weights back at the end of fit, so
    that test evaluates the selected model. Because it is anomalib's ``ModelCheckpoint``, anomalib's engine does not
    add its own default checkpoint callback and ``engine.best_model_path`` points to the selected checkpoint.

    Args:
        dirpath: Checkpoint folder; ``None`` for ``<trainer.default_root_dir>/weights/lightning`` (anomalib's place).
        filename: Checkpoint file name without extension. Defaults to ``"model"`` (anomalib's name).
        restore_best: Load the selected weights into the model at the end of fit. Defaults to ``True``.
        save_last: Also save the last epoch as ``last.ckpt`` (Lightning's option). Defaults to ``None``.
        verbose: Log every checkpoint decision. Defaults to ``False``.
        milestones: Epoch counts ``m`` at which the checkpoint selected so far is also kept as
            ``<filename>_epoch<m>.ckpt``: the model that an ``m``-epoch run would have selected (same data order,
            defects and constant learning rate), so one long run gives a learning curve. Defaults to ``()``.

    Raises:
        ValueError: If a milestone is not a positive whole number. At the start of fit, if the datamodule has no
            validation set or draws it from the test set; the message names the datamodule option
            ``val_split_mode``.

    Example:
        >>> from anomalib.engine import Engine
        >>> engine = Engine(max_epochs=100, callbacks=[HeldOutNormalCheckpoint()])
        >>> engine.train(model=model, datamodule=MultiClassMVTec(categories=["bottle"]))  # doctest: +SKIP

        From the command line: ``--trainer.callbacks+=anomalib_dcam.callbacks.HeldOutNormalCheckpoint``.
    """

    def __init__(
        self,
        dirpath: str | Path | None = None,
        filename: str = "model",
        restore_best: bool = True,
        save_last: bool | Literal["link"] | None = None,
        verbose: bool = False,
        milestones: Sequence[int] = (),
    ) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor=MONITORED_METRIC,
            mode="min",
            save_top_k=1,
            save_last=save_last,
            verbose=verbose,
            auto_insert_metric_name=False,
        )
        self.restore_best = restore_best
        self.milestones = _check_milestones(milestones)
        self._score_sum = torch.zeros((), dtype=torch.float64)
        self._image_count = 0
        self._scores_by_path: dict[str, float] = {}
        # Anomalous validation labels are accepted only when they are synthetic anomalies of training images.
        self._synthetic_anomalies = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Default the checkpoint folder to where anomalib's engine keeps its checkpoints."""
        if self.dirpath is None:
            self.dirpath = str(Path(trainer.default_root_dir) / "weights" / "lightning")
        super().setup(trainer, pl_module, stage)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Check that the validation set comes from the training images, and whether its anomalies are synthetic."""
        del pl_module
        self._synthetic_anomalies = False
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "val_split_mode"):
            return  # plain dataloaders: checked batch by batch instead
        split_mode = ValSplitMode(datamodule.val_split_mode)
        accepted = " or ".join(repr(mode.value) for mode in TRAINING_SPLIT_MODES)
        val_data = getattr(datamodule, "val_data", None)
        if val_data is None or len(val_data) == 0:
            msg = (
                f"HeldOutNormalCheckpoint needs a validation set of held-out training images, but the datamodule has "
                f"none (val_split_mode={split_mode.value!r}); set val_split_mode={accepted}."
            )
            raise ValueError(msg)
        if split_mode not in TRAINING_SPLIT_MODES:
            msg = (
                f"HeldOutNormalCheckpoint selects on held-out training images, but the validation set holds test "
                f"images (val_split_mode={split_mode.value!r}); set val_split_mode={accepted}."
            )
            raise ValueError(msg)
        self._synthetic_anomalies = split_mode == ValSplitMode.SYNTHETIC

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start a new mean."""
        del trainer, pl_module
        self._score_sum = torch.zeros((), dtype=torch.float64)
        self._image_count = 0
        self._scores_by_path: dict[str, float] = {}

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Add the raw anomaly scores of the batch's normal images to the running sum."""
        del trainer, pl_module, batch_idx, dataloader_idx
        source = outputs if getattr(outputs, "pred_score", None) is not None else batch
        scores = getattr(source, "pred_score", None)
        if scores is None:
            msg = "HeldOutNormalCheckpoint needs validation_step to return the batch with pred_score set."
            raise ValueError(msg)
        scores = scores.detach().flatten().to(torch.float64)
        labels = getattr(source, "gt_label", None)
        if labels is not None and bool((labels > 0).any()):
            if not self._synthetic_anomalies:
                msg = (
                    "HeldOutNormalCheckpoint selects on held-out training images, but a validation batch holds "
                    "anomalous images that are not synthetic; validate on held-out training images "
                    "(val_split_mode='synthetic' or 'from_train')."
                )
                raise ValueError(msg)
            normal = labels.detach().flatten().to(scores.device) == 0
            scores = scores[normal]
            paths = getattr(source, "image_path", None)
            paths = [path for path, keep in zip(paths, normal.tolist(), strict=True) if keep] if paths else None
        else:
            paths = getattr(source, "image_path", None)
        if paths and len(paths) == scores.numel():
            # Keyed by path: a distributed sampler repeats some images to even out the processes.
            self._scores_by_path.update(zip(map(str, paths), scores.cpu().tolist(), strict=True))
            return
        self._score_sum = self._score_sum + scores.sum().cpu()
        self._image_count += scores.numel()

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log the mean score over all normal validation images, each once across processes, for the decision."""
        by_path = self._scores_by_path
        totals = torch.stack([self._score_sum, torch.tensor(float(self._image_count), dtype=torch.float64)])
        if trainer.world_size > 1:
            gathered: list[dict[str, float]] = [{} for _ in range(trainer.world_size)]
            torch.distributed.all_gather_object(gathered, by_path)
            by_path = {path: score for scores in gathered for path, score in scores.items()}
            totals = trainer.strategy.reduce(totals.to(pl_module.device), reduce_op="sum").cpu()
        totals = totals + torch.tensor([sum(by_path.values()), float(len(by_path))], dtype=torch.float64)
        if totals[1] > 0:
            mean_score = (totals[0] / totals[1]).float()
            pl_module.log(MONITORED_METRIC, mean_score, prog_bar=True)

    def milestone_path(self, epochs: int) -> Path:
        """Where the checkpoint selected over the first ``epochs`` epochs is kept (``milestones``)."""
        return Path(str(self.dirpath)) / f"{self.filename}_epoch{epochs}.ckpt"

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Save the selection (Lightning), then keep a copy of it at a milestone epoch.

        The epoch's validation has run by now and Lightning has written its checkpoint, whether it saves at the end of
        validation or of the training epoch.
        """
        super().on_train_epoch_end(trainer, pl_module)
        epochs = trainer.current_epoch + 1
        if epochs in self.milestones and self.best_model_path:
            if trainer.is_global_zero:
                shutil.copyfile(self.best_model_path, self.milestone_path(epochs))
            trainer.strategy.barrier()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the selection from a checkpoint, also when the run's folder changed.

        ``anomalib train ... --ckpt_path last.ckpt`` writes into a new version folder; Lightning's checkpoint callback
        would then forget the best score so far and select among the resumed epochs only. The best checkpoint of the
        interrupted run stays where it is (files outside the new folder are never deleted) until a better one comes.
        """
        saved_dirpath = state_dict.get("dirpath", self.dirpath)
        if saved_dirpath == self.dirpath or state_dict.get("best_model_score") is None:
            super().load_state_dict(state_dict)
            return
        self.best_model_score = state_dict["best_model_score"]
        self.best_model_path = state_dict["best_model_path"]
        self.kth_best_model_path = state_dict.get("kth_best_model_path", self.kth_best_model_path)
        self.kth_value = state_dict.get("kth_value", self.kth_value)
        self.best_k_models = state_dict.get("best_k_models", self.best_k_models)
        logger.info(
            "Resuming the held-out selection of %s: best %s so far %.6g (%s).",
            saved_dirpath,
            MONITORED_METRIC,
            float(self.best_model_score),
            self.best_model_path,
        )

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Load the selected weights back into the model, so that the test after fit uses them."""
        if not self.restore_best or not self.best_model_path:
            return
        checkpoint = trainer.strategy.load_checkpoint(self.best_model_path)
        pl_module.load_state_dict(checkpoint["state_dict"])
        logger.info(
            "Restored the checkpoint with the lowest %s (%.6g) from %s",
            MONITORED_METRIC,
            float(self.best_model_score) if self.best_model_score is not None else float("nan"),
            self.best_model_path,
        )
