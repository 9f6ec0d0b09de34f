# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""The recognised product in exported models, kept off the outputs so that anomalib's own inferencers read them.

anomalib's :class:`~anomalib.deploy.OpenVINOInferencer` and :class:`~anomalib.deploy.TorchInferencer` build their
result from *every* output of the model (``NumpyImageBatch(image=..., **outputs)``), so an extra ``pred_category``
output makes them raise. The plugin's exports therefore keep the recognised category *inside* the graph, as a tensor
named ``pred_category`` that ``pred_label`` reads (an unknown product is labelled anomalous), and give the file
anomalib's four outputs:

- ``.pt`` (``to_torch``): the model's forward returns a
  :class:`~anomalib_dcam.post_processing.CategoryInferenceBatch`, an ``InferenceBatch`` whose ``_asdict()`` is
  anomalib's four fields; ``pred_category`` is an attribute.
- ONNX and OpenVINO (``to_onnx``, ``to_openvino``, ``anomalib export``, :func:`~anomalib_dcam.deploy.export_openvino`):
  the graph is exported with a fifth output named ``pred_category`` (:func:`exporting_category`), which
  :func:`hide_category_output` then removes from the outputs, keeping its producer and its name; the category names
  go into the ONNX metadata (and from there into the IR's ``rt_info``).
- QAT export: :func:`hide_category_result` does the same on the OpenVINO model.

The plugin's readers (:func:`~anomalib_dcam.deploy.compile_openvino`, :func:`~anomalib_dcam.deploy.openvino_inferencer`,
:class:`~anomalib_dcam.deploy.OpenVINOModel`) call :func:`expose_category_output` on the model they read, which adds
the tensor back as an output (``openvino.Model.add_outputs``): nothing is computed twice and the teacher still runs
once. An IR exported before this change has ``pred_category`` as an output already; the plugin reads it as before.

A graph keeps the tensor only while something reads it: with ``enable_thresholding=False`` (no ``pred_label``) or a
fixed ``known_category`` the export has no category.
"""

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomalib_dcam.categories import CATEGORY_OUTPUT

if TYPE_CHECKING:
    import openvino as ov

__all__ = [
    "CATEGORY_OUTPUT",
    "CategoryExportMixin",
    "ONNX_METADATA_KEY",
    "expose_category_output",
    "exporting_category",
    "hide_category_output",
    "hide_category_result",
]

logger = logging.getLogger(__name__)

ONNX_METADATA_KEY = "anomalib_dcam/category_names"
"""``metadata_props`` key of the category names (a JSON list) in an exported ONNX file."""


@contextmanager
def exporting_category(model: Any) -> Iterator[bool]:
    """Make a unified model's forward return the category as a fifth output while exporting.

    Args:
        model: The model being exported; nothing changes when its post-processor does not recognise products.

    Yields:
        Whether the model returns the category (its post-processor recognises products).
    """
    post_processor = getattr(model, "post_processor", None)
    if not getattr(post_processor, "is_multi_category", False) or not hasattr(post_processor, "export_category"):
        yield False
        return
    previous = post_processor.export_category
    post_processor.export_category = True
    try:
        yield True
    finally:
        post_processor.export_category = previous


def hide_category_output(onnx_path: str | Path, category_names: Sequence[str] = ()) -> bool:
    """Remove the ``pred_category`` output of an ONNX file, keeping the tensor inside the graph; store the names.

    Args:
        onnx_path: The exported ``.onnx`` file, rewritten in place.
        category_names: Category names, written to the file's metadata (:data:`ONNX_METADATA_KEY`).

    Returns:
        Whether the file had the output.
    """
    import onnx

    path = Path(onnx_path)
    model = onnx.load(str(path))
    graph = model.graph
    kept = [output for output in graph.output if output.name != CATEGORY_OUTPUT]
    if len(kept) == len(graph.output):
        return False
    if not any(CATEGORY_OUTPUT in node.input for node in graph.node):
        logger.warning(
            "The exported model has no category: nothing in the graph reads it (thresholding off, or a fixed "
            "known_category), so it is left out to keep anomalib's four outputs.",
        )
    del graph.output[:]
    graph.output.extend(kept)
    if category_names:
        properties = {prop.key: prop for prop in model.metadata_props}
        entry = properties.get(ONNX_METADATA_KEY) or model.metadata_props.add()
        entry.key, entry.value = ONNX_METADATA_KEY, json.dumps(list(category_names))
    onnx.save(model, str(path))
    return True


def hide_category_result(ov_model: "ov.Model") -> bool:
    """Remove the ``pred_category`` result of an OpenVINO model, keeping the tensor inside the graph.

    Args:
        ov_model: The model, changed in place.

    Returns:
        Whether the model had the output.
    """
    for result in ov_model.get_results():
        if CATEGORY_OUTPUT in result.input_value(0).get_names():
            ov_model.remove_result(result)
            return True
    return False


def expose_category_output(ov_model: "ov.Model") -> bool:
    """Add the ``pred_category`` tensor of an exported model back as an output (for the plugin's readers).

    Args:
        ov_model: A model read from an exported IR or ONNX file, changed in place (before compiling it).

    Returns:
        Whether the model now has the output: ``False`` for a model without recognition.
    """
    if any(CATEGORY_OUTPUT in output.get_names() for output in ov_model.outputs):
        return True  # exported before the category was kept off the outputs
    if not any(CATEGORY_OUTPUT in output.get_names() for op in ov_model.get_ops() for output in op.outputs()):
        return False
    ov_model.add_outputs([CATEGORY_OUTPUT])
    return True


class CategoryExportMixin:
    """Export a unified model with its category inside the graph (see the module docstring).

    Place it before ``AnomalibModule`` in a model's bases (Dcam has it through
    :class:`~anomalib_dcam.deploy.OpenVINOQuantizationMixin`): ``to_onnx``, and through it ``to_openvino`` and
    ``anomalib export``, then write anomalib's four outputs, the ``pred_category`` tensor and the category names.
    """

    def to_onnx(self, *args: Any, **kwargs: Any) -> Path:
        """Export as anomalib does, with the category kept inside the graph and its names in the metadata."""
        from anomalib_dcam.deploy.categories import model_category_names

        with exporting_category(self):
            onnx_path = super().to_onnx(*args, **kwargs)  # type: ignore[misc]
        hide_category_output(onnx_path, model_category_names(self))
        return onnx_path
