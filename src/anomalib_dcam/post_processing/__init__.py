# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Post-processors: per-category calibration of a unified model, chosen by the model's own product recognition."""

from anomalib_dcam.deploy.categories import UNKNOWN_CATEGORY_NAME
from anomalib_dcam.post_processing.category import (
    UNKNOWN_CATEGORY,
    CategoryInferenceBatch,
    CategoryPostProcessor,
    CategoryRecognizer,
    pooled_features,
)

__all__ = [
    "UNKNOWN_CATEGORY",
    "UNKNOWN_CATEGORY_NAME",
    "CategoryInferenceBatch",
    "CategoryPostProcessor",
    "CategoryRecognizer",
    "pooled_features",
]
