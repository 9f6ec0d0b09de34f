# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Lightning callbacks of the benchmark's training phase: training-loop timing and example heat maps."""

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.nn import functional

__all__ = ["ExampleCollector", "TrainingMonitor", "select_examples"]

EXAMPLE_MAP_SIDE = 128
"""Example anomaly maps are stored at most this many pixels wide."""

_PIXEL_SAMPLES_PER_BATCH = 4096  # anomaly-map pixels sampled per test batch for the heat maps' colour range


class TrainingMonitor(Callback):
    """Time the training loop (data loading included, validation excluded) and count the training images.

    Args:
        on_epoch_end: Called with ``(finished epochs, max epochs)`` after every training epoch, e.g. to report progress.
    """

    def __init__(self, on_epoch_end: Callable[[int, int], None] | None = None) -> None:
        super().__init__()
        self.seconds = 0.0
        self.images = 0
        self._on_epoch_end = on_epoch_end
        self._started: float | None = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the clock."""
        del trainer, pl_module
        self._started = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Count the images of the batch."""
        del trainer, pl_module, outputs, batch_idx
        image = getattr(batch, "image", None)
        self.images += int(image.shape[0]) if image is not None else 0

    def _stop(self) -> None:
        if self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self._started = None

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Validation runs inside the training epoch; it is not training time."""
        del trainer, pl_module
        self._stop()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Stop the clock (if validation has not) and report the epoch."""
        del pl_module
        self._stop()
        if self._on_epoch_end is not None:
            self._on_epoch_end(trainer.current_epoch + 1, trainer.max_epochs)


def select_examples(samples: Any, count: int, default_category: str) -> list[str]:
    """Pick the test images shown in the heat-map figures: the same ones for every model of a datamodule.

    Every category gets an equal share; in each, about a third are normal images and the rest anomalous ones, taken
    in turn from each defect type (the image's folder), in file-name order.

    Args:
        samples: The test dataset's ``samples`` table (``image_path``, ``label_index``, maybe ``category``).
        count: Number of images to pick.
        default_category: Category of every sample when the table has no ``category`` column.

    Returns:
        The image paths.
    """
    if count <= 0 or samples is None or len(samples) == 0:
        return []
    table = samples.sort_values("image_path")
    categories = table["category"].astype(str) if "category" in table.columns else [default_category] * len(table)
    by_category: dict[str, list[tuple[str, int]]] = {}
    for path, label, category in zip(table["image_path"], table["label_index"], categories, strict=True):
        by_category.setdefault(category, []).append((str(path), int(label)))
    share = max(1, count // len(by_category))
    selected: list[str] = []
    for items in by_category.values():
        normals = [path for path, label in items if label == 0]
        by_defect: dict[str, list[str]] = {}
        for path, label in items:
            if label != 0:
                by_defect.setdefault(Path(path).parent.name, []).append(path)
        num_normal = min(len(normals), max(1, share // 3))
        anomalous: list[str] = []
        while any(by_defect.values()) and len(anomalous) < share - num_normal:
            for paths in by_defect.values():
                if paths and len(anomalous) < share - num_normal:
                    anomalous.append(paths.pop(0))
        selected.extend(anomalous + normals[:num_normal])
    return selected[:count]


class ExampleCollector(Callback):
    """Keep the raw anomaly maps of a few test images, and a sample of all anomaly-map pixels for the colour range.

    A trainer callback runs before the model's post-processor, so the maps are the model's raw output.

    Args:
        count: Number of example images (see :func:`select_examples`).
    """

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count
        self.samples: Any = None
        self.category = "all"
        self.selected: list[str] = []
        self.maps: dict[str, np.ndarray] = {}
        self.scores: dict[str, float] = {}
        self.pixels: list[torch.Tensor] = []
        self._generator = torch.Generator().manual_seed(0)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Select the examples from the test set."""
        del pl_module
        datamodule = getattr(trainer, "datamodule", None)
        self.samples = getattr(getattr(datamodule, "test_data", None), "samples", None)
        self.category = str(getattr(datamodule, "category", None) or "all")
        self.selected = select_examples(self.samples, self.count, self.category)
        self.maps, self.scores, self.pixels = {}, {}, []

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep the maps of the selected images and sample pixels of all maps."""
        del trainer, pl_module, batch_idx, dataloader_idx
        source = outputs if getattr(outputs, "anomaly_map", None) is not None else batch
        maps = getattr(source, "anomaly_map", None)
        if maps is None:
            return
        maps = maps.detach().float().cpu()
        maps = maps.reshape(maps.shape[0], 1, *maps.shape[-2:])
        flat = maps.flatten()
        count = min(_PIXEL_SAMPLES_PER_BATCH, flat.numel())
        self.pixels.append(flat[torch.randint(0, flat.numel(), (count,), generator=self._generator)])
        scores = getattr(source, "pred_score", None)
        for position, path in enumerate(getattr(source, "image_path", None) or []):
            if str(path) not in self.selected:
                continue
            side = min(EXAMPLE_MAP_SIDE, maps.shape[-1])
            small = functional.interpolate(maps[position : position + 1], size=(side, side), mode="area")
            self.maps[str(path)] = small[0, 0].numpy().astype(np.float16)
            if scores is not None:
                self.scores[str(path)] = float(scores.detach().flatten()[position])

    def save(self, path: Path) -> None:
        """Write the examples and the colour range (1st and 99.9th percentile of the sampled pixels) to ``path``."""
        paths = [image_path for image_path in self.selected if image_path in self.maps]
        if not paths or self.samples is None:
            return
        table = self.samples.set_index(self.samples["image_path"].astype(str))

        def column(name: str, image_path: str, default: object) -> object:
            value = table.loc[image_path, name] if name in table.columns else default
            return default if value is None or (isinstance(value, float) and math.isnan(value)) else value

        np.savez_compressed(
            path,
            image_paths=np.array(paths),
            mask_paths=np.array([str(column("mask_path", p, "")) for p in paths]),
            labels=np.array([int(column("label_index", p, 0)) for p in paths]),
            categories=np.array([str(column("category", p, self.category)) for p in paths]),
            maps=np.stack([self.maps[p] for p in paths]),
            scores=np.array([self.scores.get(p, math.nan) for p in paths]),
            color_range=np.percentile(torch.cat(self.pixels).numpy(), [1.0, 99.9]),
        )
