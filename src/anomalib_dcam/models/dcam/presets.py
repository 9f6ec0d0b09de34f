# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Named option sets of :class:`~anomalib_dcam.models.dcam.Dcam` that reproduce a reference model.

``Dcam(**STFPM_OPTIONS, lr=0.4, channels_last=False)`` trains exactly like anomalib's ``Stfpm`` (same loss on the same
batch, same weights after training on the same batches; tests/test_model.py), and faster where the teacher-feature
cache applies: the cache stores float32 features, so it changes the time and nothing else. Dcam's default
channels-last layout trains the same model up to float32 rounding (convolutions sum in another order). The benchmarks
compare Dcam with Stfpm at lr 0.1 this way on grids too long for anomalib's Stfpm on a CPU.
"""

from typing import Any

__all__ = ["STFPM_OPTIONS"]

STFPM_OPTIONS: dict[str, Any] = {
    "attention": "none",
    "pixel_weight": 1.0,
    "channel_weight": 0.0,
    "kd_weight": 0.0,
    "batch_reduction": "sum",
    "hard_fraction": 1.0,
    "global_weight": 0.0,
    "anomaly_map_combine": "product",
    "anomaly_map_sigma": 0.0,
    "synthetic_anomaly_probability": 0.0,
    "image_score_top_fraction": 0.0,
    "momentum": 0.9,
    "weight_decay": 1e-3,
    "teacher_cache_dtype": "float32",
}
"""STFPM's student, pixel term, product map and map maximum, SGD with momentum 0.9 and weight decay 1e-3, no synthetic
defects; anomalib's Stfpm hard-codes ``lr=0.4``, which stays the caller's choice."""
