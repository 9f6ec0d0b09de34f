# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Category names in exported models: a unified model's ``pred_category`` gets its names back.

The names are stored in the IR's ``rt_info`` under ``anomalib_dcam/category_names`` (a JSON list), written by
``model.to_openvino`` / ``anomalib export`` of a model with a multi-category
:class:`~anomalib_dcam.post_processing.CategoryPostProcessor`, and by :func:`anomalib_dcam.deploy.export_openvino`. An
ONNX file exported by the plugin holds them in its metadata (``metadata_props``), which OpenVINO reads into
``rt_info["framework"]``; :func:`read_category_names` looks in both places.
"""

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomalib_dcam.categories import UNKNOWN_CATEGORY_NAME, category_name

if TYPE_CHECKING:
    import openvino as ov

__all__ = [  # the vocabulary (UNKNOWN_CATEGORY_NAME, category_name) is re-exported from anomalib_dcam.categories
    "ONNX_RT_INFO_PATH",
    "RT_INFO_PATH",
    "UNKNOWN_CATEGORY_NAME",
    "category_name",
    "model_category_names",
    "read_category_names",
    "read_category_names_from_file",
    "set_category_names",
    "write_category_names",
]

RT_INFO_PATH = ["anomalib_dcam", "category_names"]
"""Where the category names live in an IR's ``rt_info``."""

ONNX_RT_INFO_PATH = ["framework", "anomalib_dcam/category_names"]
"""Where OpenVINO puts the names of an ONNX file's metadata (and keeps them when converting it to an IR)."""


def model_category_names(model: Any) -> list[str]:
    """Category names of a model whose post-processor recognises several categories; empty otherwise."""
    post_processor = getattr(model, "post_processor", None)
    if not getattr(post_processor, "is_multi_category", False):
        return []
    return list(post_processor.category_names)


def set_category_names(ov_model: "ov.Model", names: list[str]) -> None:
    """Store ``names`` in an OpenVINO model's ``rt_info`` (nothing for an empty list)."""
    if names:
        ov_model.set_rt_info(json.dumps(names), RT_INFO_PATH)


def read_category_names(ov_model: "ov.Model") -> list[str]:
    """Category names stored by :func:`set_category_names` or in ONNX metadata; empty for a model without them."""
    for path in (RT_INFO_PATH, ONNX_RT_INFO_PATH):
        if ov_model.has_rt_info(path):
            return [str(name) for name in json.loads(ov_model.get_rt_info(path).astype(str))]
    return []


def read_category_names_from_file(path: str | Path) -> list[str]:
    """Category names of an ``.xml`` IR or ``.onnx`` file (reads the file; prefer :func:`read_category_names`)."""
    import openvino as ov

    if Path(path).suffix not in {".xml", ".onnx"}:
        return []
    return read_category_names(ov.Core().read_model(str(path)))


def write_category_names(xml_path: str | Path, names: list[str]) -> None:
    """Add ``names`` to a saved IR, rewriting its ``.xml``/``.bin`` in place (weights unchanged)."""
    if not names:
        return
    import openvino as ov

    xml_path = Path(xml_path)
    ov_model = ov.Core().read_model(str(xml_path))
    set_category_names(ov_model, names)
    staged = xml_path.with_name(f".{xml_path.stem}.staged.xml")
    ov.save_model(ov_model, staged, compress_to_fp16=False)  # an FP16 IR's weights are already half precision
    del ov_model
    os.replace(staged.with_suffix(".bin"), xml_path.with_suffix(".bin"))
    os.replace(staged, xml_path)
