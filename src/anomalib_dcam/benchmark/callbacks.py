# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Training-speed timing: the one callback behind ``train_images_per_s`` and ``benchmarks/train_speed.py``."""

import time
from collections.abc import Callable
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

__all__ = ["TrainingMonitor"]


def _batch_size(batch: Any) -> int:
    image = getattr(batch, "image", None)
    return int(image.shape[0]) if image is not None else 0


class TrainingMonitor(Callback):
    """Time every epoch's training loop and validation, and count their images.

    Per epoch (:attr:`epochs`): ``train_s``, from the epoch's start to the end of its last training batch (data
    loading included, validation excluded); ``images``; ``data_wait_s``, the time the loop waited for the data loader
    between batches; ``val_s`` and ``val_images`` of the validation that follows. :attr:`first_batch_at` is the
    ``time.perf_counter()`` at which the first training batch started (for start-up times).

    Args:
        on_epoch_end: Called with ``(finished epochs, max epochs)`` after every training epoch, e.g. to report progress.
    """

    def __init__(self, on_epoch_end: Callable[[int, int], None] | None = None) -> None:
        super().__init__()
        self.epochs: list[dict[str, Any]] = []
        self.first_batch_at: float | None = None
        self._on_epoch_end = on_epoch_end
        self._epoch_start = self._batch_end = self._validation_start = 0.0

    @property
    def seconds(self) -> float:
        """Seconds of all training loops."""
        return sum(epoch["train_s"] for epoch in self.epochs)

    @property
    def images(self) -> int:
        """Training images of all epochs."""
        return sum(epoch["images"] for epoch in self.epochs)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the epoch's clock."""
        del trainer, pl_module
        self._epoch_start = self._batch_end = time.perf_counter()
        self.epochs.append({"train_s": 0.0, "images": 0, "data_wait_s": 0.0, "val_s": 0.0, "val_images": 0})

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        """Count the wait for the data loader since the previous batch ended."""
        del trainer, pl_module, batch, batch_idx
        now = time.perf_counter()
        if self.first_batch_at is None:
            self.first_batch_at = now
        self.epochs[-1]["data_wait_s"] += now - self._batch_end

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Count the images; the training loop lasts until this batch's end."""
        del trainer, pl_module, outputs, batch_idx
        self._batch_end = time.perf_counter()
        self.epochs[-1]["images"] += _batch_size(batch)
        self.epochs[-1]["train_s"] = self._batch_end - self._epoch_start

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the validation clock."""
        del trainer, pl_module
        self._validation_start = time.perf_counter()

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, *_: int
    ) -> None:
        """Count the validation images of a training epoch (not those of a sanity check)."""
        del pl_module, outputs
        if self.epochs and not trainer.sanity_checking:
            self.epochs[-1]["val_images"] += _batch_size(batch)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Stop the validation clock."""
        del pl_module
        if self.epochs and not trainer.sanity_checking:
            self.epochs[-1]["val_s"] += time.perf_counter() - self._validation_start

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Report the epoch."""
        del pl_module
        if self._on_epoch_end is not None:
            self._on_epoch_end(trainer.current_epoch + 1, trainer.max_epochs)
