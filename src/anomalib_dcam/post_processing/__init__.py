# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Post-processors: thresholds at a false-alarm rate, order-keeping scores, per-category calibration of a unified model.

- :class:`CategoryPostProcessor`: Dcam's default post-processor (product recognition, per-category calibration).
- :mod:`~anomalib_dcam.post_processing.false_alarm`: thresholds from normal images at a stated false-alarm rate.
- :mod:`~anomalib_dcam.post_processing.score_map`: the strictly increasing map of raw scores to ``(0, 1)``.
"""

from anomalib_dcam.categories import UNKNOWN_CATEGORY_NAME
from anomalib_dcam.post_processing.category import (
    UNKNOWN_CATEGORY,
    CategoryInferenceBatch,
    CategoryOutputs,
    CategoryPostProcessor,
    CategoryRecognizer,
    Normalization,
    ThresholdMethod,
    pooled_features,
)
from anomalib_dcam.post_processing.false_alarm import FalseAlarmThreshold, false_alarm_threshold
from anomalib_dcam.post_processing.score_map import threshold_centred_map

__all__ = [
    "UNKNOWN_CATEGORY",
    "UNKNOWN_CATEGORY_NAME",
    "CategoryInferenceBatch",
    "CategoryOutputs",
    "CategoryPostProcessor",
    "CategoryRecognizer",
    "FalseAlarmThreshold",
    "Normalization",
    "ThresholdMethod",
    "false_alarm_threshold",
    "pooled_features",
    "threshold_centred_map",
]
