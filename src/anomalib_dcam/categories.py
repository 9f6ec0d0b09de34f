# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""The category vocabulary that every layer shares: the unknown index and name, the output's name, name lookup.

A model trained on several products outputs, for each image, the index of its product in the model's category names
(``pred_category``), or :data:`UNKNOWN_CATEGORY` for an image of none of them. The post-processor, the exporters and
the inferencers all speak of categories with these words, and import them from here (this module imports nothing of
the package), so no layer has to import another to name a category.
"""

__all__ = ["CATEGORY_OUTPUT", "UNKNOWN_CATEGORY", "UNKNOWN_CATEGORY_NAME", "category_name"]

CATEGORY_OUTPUT = "pred_category"
"""Name of the category output (a batch field, an exported tensor): the index into the category names."""

UNKNOWN_CATEGORY = -1
"""``pred_category`` of an image of none of the model's products."""

UNKNOWN_CATEGORY_NAME = "unknown"
"""Name given to :data:`UNKNOWN_CATEGORY`."""


def category_name(index: int, names: list[str]) -> str:
    """Name of a ``pred_category`` value: ``"unknown"`` for -1, the index itself when no names are known.

    Example:
        >>> category_name(1, ["bottle", "tile"]), category_name(-1, ["bottle"]), category_name(3, [])
        ('tile', 'unknown', '3')
    """
    if index < 0:
        return UNKNOWN_CATEGORY_NAME
    return names[index] if index < len(names) else str(index)
