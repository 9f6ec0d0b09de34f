# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Datamodules of the anomalib-dcam plugin.

``MultiClassMVTec`` trains one model on several categories of an MVTec-layout root; use it from the command line as
``--data anomalib_dcam.data.MultiClassMVTec``.
"""

from .multiclass import (
    CATEGORY_COLUMN,
    MultiClassMVTec,
    MultiClassMVTecDataset,
    categories_by_image_path,
    find_categories,
    resolve_categories,
)

__all__ = [
    "CATEGORY_COLUMN",
    "MultiClassMVTec",
    "MultiClassMVTecDataset",
    "categories_by_image_path",
    "find_categories",
    "resolve_categories",
]
