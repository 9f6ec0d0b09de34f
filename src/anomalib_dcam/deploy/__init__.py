# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Edge deployment of Dcam with OpenVINO: export at every precision, INT8 calibration sources, QAT, inference.

- :func:`export_openvino`: FP32, FP16, INT8 (weights), INT8_PTQ and INT8_ACQ IRs from Python.
- :class:`OpenVINOQuantizationMixin`: the same INT8 steps for ``model.to_openvino`` and ``anomalib export``.
- Calibration datamodules (usable as ``--data anomalib_dcam.deploy.<Class>``): :class:`NormalsCalibration`,
  :class:`RandomNormalCalibration`, :class:`SyntheticAnomalyCalibration`.
- :mod:`anomalib_dcam.deploy.qat`: quantization-aware training (``python -m anomalib_dcam.deploy.qat``).
- :func:`openvino_inferencer` and :func:`compile_openvino`: inference with an explicit precision hint; the inferencer
  takes any image size, grayscale or RGBA, and can be shared by threads.
- :mod:`anomalib_dcam.deploy.category_output`: a unified model's recognised product kept inside the exported graph,
  so that anomalib's own ``OpenVINOInferencer`` and ``TorchInferencer`` read every export.
- :class:`OpenVINOModel`: an exported IR as an anomalib model, for ``anomalib predict`` and ``anomalib test``.

docs/deployment.md walks through all of it.
"""

from importlib import import_module

# Imported on first use (PEP 562): an edge process that only runs inference (``deploy.inference``) never imports
# PyTorch or anomalib through this package.
_LAZY_ATTRIBUTES = {
    "CalibrationDataModule": "calibration",
    "CalibrationSource": "calibration",
    "NoiseSpace": "calibration",
    "NormalsCalibration": "calibration",
    "RandomNormalCalibration": "calibration",
    "SyntheticAnomalyCalibration": "calibration",
    "build_calibration_datamodule": "calibration",
    "ACCEPTED_IMAGES": "inference",
    "CategoryExportMixin": "category_output",
    "CategoryOpenVINOInferencer": "inference",
    "expose_category_output": "category_output",
    "exporting_category": "category_output",
    "hide_category_output": "category_output",
    "hide_category_result": "category_output",
    "image_batch": "inference",
    "read_openvino_model": "inference",
    "PRECISION_HINTS": "inference",
    "read_category_names": "categories",
    "read_category_names_from_file": "categories",
    "compile_openvino": "inference",
    "openvino_config": "inference",
    "openvino_inferencer": "inference",
    "static_input_size": "inference",
    "OpenVINOInferenceModel": "openvino_model",
    "OpenVINOModel": "openvino_model",
    "OpenVINOQuantizationMixin": "quantization",
    "anomaly_head_ignored_scope": "quantization",
    "compress_openvino_model": "quantization",
    "convert_to_openvino": "quantization",
    "export_openvino": "quantization",
    "quantize_post_training": "quantization",
    "quantize_with_accuracy_control": "quantization",
    "resolve_acq_metric": "quantization",
    "save_openvino": "quantization",
}

__all__ = [
    "ACCEPTED_IMAGES",
    "PRECISION_HINTS",
    "CalibrationDataModule",
    "CalibrationSource",
    "CategoryExportMixin",
    "CategoryOpenVINOInferencer",
    "NoiseSpace",
    "NormalsCalibration",
    "OpenVINOInferenceModel",
    "OpenVINOModel",
    "OpenVINOQuantizationMixin",
    "RandomNormalCalibration",
    "SyntheticAnomalyCalibration",
    "anomaly_head_ignored_scope",
    "build_calibration_datamodule",
    "compile_openvino",
    "compress_openvino_model",
    "convert_to_openvino",
    "export_openvino",
    "expose_category_output",
    "exporting_category",
    "hide_category_output",
    "hide_category_result",
    "image_batch",
    "openvino_config",
    "openvino_inferencer",
    "quantize_post_training",
    "quantize_with_accuracy_control",
    "read_category_names",
    "read_category_names_from_file",
    "read_openvino_model",
    "resolve_acq_metric",
    "save_openvino",
    "static_input_size",
]


def __getattr__(name: str) -> object:
    """Import the public names on first access (PEP 562)."""
    if name in _LAZY_ATTRIBUTES:
        return getattr(import_module(f"{__name__}.{_LAZY_ATTRIBUTES[name]}"), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY_ATTRIBUTES])
