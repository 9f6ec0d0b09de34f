# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Lightning callbacks for multi-category training and evaluation.

* :class:`HeldOutNormalCheckpoint` keeps the checkpoint with the lowest mean anomaly score on held-out normal
  images (the DCAM paper's model selection).
* :class:`PerCategoryMetrics` reports image/pixel AUROC, AUPRO and image F1Max per category after test.

Both work from the command line, e.g. ``--trainer.callbacks+=anomalib_dcam.callbacks.PerCategoryMetrics``.
"""

from .held_out import MONITORED_METRIC, HeldOutNormalCheckpoint
from .per_category import METRIC_NAMES, PerCategoryMetrics, compute_anomaly_metrics

__all__ = [
    "METRIC_NAMES",
    "MONITORED_METRIC",
    "HeldOutNormalCheckpoint",
    "PerCategoryMetrics",
    "compute_anomaly_metrics",
]
