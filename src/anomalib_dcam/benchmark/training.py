# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Fitting and testing with anomalib's ``Engine``, timed.

The one training run behind ``anomalib-dcam benchmark`` and the research scripts (``benchmarks/unified.py``,
``benchmarks/train_speed.py``).
"""

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anomalib.data import AnomalibDataModule
    from anomalib.engine import Engine
    from anomalib.models import AnomalibModule
    from lightning.pytorch import Callback

__all__ = ["timed_fit", "timed_test"]


def timed_fit(
    model: "AnomalibModule",
    datamodule: "AnomalibDataModule",
    root_dir: Path,
    callbacks: Sequence["Callback"],
    **trainer: Any,
) -> tuple["Engine", float]:
    """Fit ``model`` on ``datamodule`` with an engine of these callbacks and ``Trainer`` arguments, no logger.

    Args:
        model: The untrained model.
        datamodule: Its data.
        root_dir: The engine's ``default_root_dir`` (checkpoints).
        callbacks: Lightning callbacks, e.g. :class:`anomalib_dcam.callbacks.PerCategoryMetrics` for the metrics.
        **trainer: Lightning ``Trainer`` arguments (``max_epochs``, ``precision``, ...).

    Returns:
        The engine (to test with) and the seconds of fitting.
    """
    from anomalib.engine import Engine

    engine = Engine(default_root_dir=root_dir, logger=False, callbacks=list(callbacks), **trainer)
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    return engine, time.perf_counter() - start


def timed_test(engine: "Engine", model: "AnomalibModule", datamodule: "AnomalibDataModule") -> float:
    """Test ``model`` (the weights it holds, e.g. those a checkpoint callback selected) and return the seconds."""
    start = time.perf_counter()
    engine.test(model=model, datamodule=datamodule, verbose=False)
    return time.perf_counter() - start
