# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Unknown-product limits of a unified model, re-fitted at the precision of its INT8 IR.

A unified model flags an image as an unknown product when the cosine distance of its teacher's pooled features to the
nearest category prototype exceeds that category's limit
(:class:`~anomalib_dcam.post_processing.category.CategoryRecognizer`). The limits are fitted on floating-point
training features, and a product whose normal images are all alike gets a very small limit. INT8 quantization of the
teacher moves every feature by a little, which for such a product is more than its limit: every one of its images,
normal or not, is then rejected as unknown.

:func:`refit_distance_limits` sets the limits again on the quantized model's *own* features. It reads the pooled
features from a copy of the INT8 graph (the recogniser's feature input added as an output), describes every normal
training image whose category is known, and applies the training rule
(:func:`~anomalib_dcam.post_processing.false_alarm.false_alarm_threshold`, the model's ``unknown_rejection_rate``) to
each category's distances to its prototype. The new limits replace the limits constant of the IR; the prototypes,
the teacher, the student and the rest of the post-processing are untouched. A limit grows only where the quantized
features of the category's normals lie farther from the prototype than the floating-point limit allows, and may
shrink where they do not. The old and new limits are logged and kept in the IR's ``rt_info`` under
:data:`RT_INFO_PATH`.

Why re-fit rather than keep the recogniser in floating point: the recognition head already runs in floating point
(it lies in the anomaly-head ignored scope), yet its input comes from the quantized teacher. Only limits that were
measured on quantized features hold for quantized features.

The images are the training normals, as at training: each of them also shaped its prototype (by ``1 / n`` of its
weight for ``n`` images of its category), which lowers its distance by a share of about ``1 / n``, far less than the
quantization shift this corrects. All of them are used rather than the calibration subset, since the rule needs at
least 99 normals per category to set a 1 % limit by an order statistic rather than by a tail fit.
"""

import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from anomalib_dcam.post_processing.false_alarm import false_alarm_threshold

if TYPE_CHECKING:
    import openvino as ov

    from anomalib_dcam.post_processing.category import CategoryRecognizer

logger = logging.getLogger(__name__)

__all__ = ["RT_INFO_PATH", "find_recognition_nodes", "read_refitted_limits", "refit_distance_limits"]

RT_INFO_PATH = ["anomalib_dcam", "unknown_limits"]
"""Where an INT8 IR records its re-fitted limits (a JSON mapping of category name to limits and counts)."""


def _constant_equal_to(ov_model: "ov.Model", values: np.ndarray) -> list[Any]:
    """The model's constants that hold exactly ``values`` (or their transpose, for a 2-D array)."""
    shapes = {values.shape, values.T.shape}
    matches = []
    for node in ov_model.get_ordered_ops():
        if node.get_type_name() != "Constant" or tuple(node.get_output_shape(0)) not in shapes:
            continue
        data = np.asarray(node.get_data(), dtype=np.float32)
        candidate = data if data.shape == values.shape else data.T
        if np.array_equal(candidate, values):
            matches.append(node)
    return matches


def find_recognition_nodes(ov_model: "ov.Model", recognizer: "CategoryRecognizer") -> tuple[Any, Any] | None:
    """The limits constant of an exported unified model and the output that feeds the recogniser its features.

    Both are found by value, which survives the renaming of ONNX export and OpenVINO conversion: the limits constant
    holds ``recognizer.distance_limits``; the features are the other input of the product with the constant that
    holds ``recognizer.prototypes``.

    Args:
        ov_model: The exported model (floating point or quantized; NNCF leaves the recogniser in floating point).
        recognizer: The recogniser the model was exported with.

    Returns:
        ``(limits_constant, features_output)``, or ``None`` when either is not found exactly once.
    """
    limits = _constant_equal_to(ov_model, recognizer.distance_limits.detach().float().cpu().numpy())
    prototypes = _constant_equal_to(ov_model, recognizer.prototypes.detach().float().cpu().numpy())
    products = [
        target.get_node()
        for node in prototypes
        for target in node.output(0).get_target_inputs()
        if target.get_node().get_type_name() == "MatMul"
    ]
    if len(limits) != 1 or len(products) != 1:
        return None
    product = products[0]
    prototype_names = {node.get_friendly_name() for node in prototypes}
    features = [
        product.input(index).get_source_output()
        for index in range(2)
        if product.input(index).get_source_output().get_node().get_friendly_name() not in prototype_names
    ]
    return (limits[0], features[0]) if len(features) == 1 else None


def _quantized_features(
    ov_model: "ov.Model",
    features_output: Any,
    dataloader: DataLoader,
    input_size: tuple[int, int] | None,
) -> np.ndarray:
    """Pooled features of every image of ``dataloader``, read from a copy of the model with them as an extra output."""
    from anomalib_dcam.deploy.inference import compile_openvino
    from anomalib_dcam.deploy.quantization import _batch_images, _resize_images

    reader = ov_model.clone()
    source_name = features_output.get_node().get_friendly_name()
    source = next(node for node in reader.get_ordered_ops() if node.get_friendly_name() == source_name)
    extra = reader.add_outputs([source.output(features_output.get_index())])[0]
    compiled = compile_openvino(reader)  # the f32 hint of deployment: the INT8 layers still run in INT8
    features_port = compiled.outputs[[output.get_any_name() for output in reader.outputs].index(extra.get_any_name())]
    features = []
    for batch in dataloader:
        images = _resize_images(_batch_images(batch), input_size).numpy()
        features.append(np.asarray(compiled(images)[features_port], dtype=np.float32).reshape(len(images), -1))
    return np.concatenate(features)


def refit_distance_limits(
    ov_model: "ov.Model",
    recognizer: "CategoryRecognizer",
    category_names: list[str],
    datamodule: object,
    input_size: tuple[int, int] | None,
) -> dict[str, dict[str, Any]] | None:
    """Re-fit each category's unknown-product limit on the quantized model's features and write it into the model.

    See the module docstring. Categories without labelled normals keep their floating-point limit; without any
    labelled normals (a datamodule that is not a :class:`~anomalib_dcam.deploy.calibration.CalibrationDataModule`
    wrapping a unified datamodule) every limit is kept. Both are logged as warnings.

    Args:
        ov_model: The quantized model, changed in place.
        recognizer: The recogniser the model was exported with (prototypes, floating-point limits, rejection rate).
        category_names: The model's category names, in the recogniser's order.
        datamodule: The calibration datamodule of the quantization.
        input_size: The model's static input size (``None`` for a dynamic one).

    Returns:
        Per category: the floating-point and re-fitted limits and how the new one was set; ``None`` when nothing was
        re-fitted.
    """
    from anomalib_dcam.deploy.calibration import CalibrationDataModule

    labelled = datamodule.labelled_normals() if isinstance(datamodule, CalibrationDataModule) else None
    if labelled is None:
        logger.warning(
            "INT8 unknown-product limits: the calibration data gives no normal images with their categories (use "
            "NormalsCalibration around the unified training datamodule); the limits fitted in floating point are "
            "kept, and quantization may move known products' normals beyond them.",
        )
        return None
    nodes = find_recognition_nodes(ov_model, recognizer)
    if nodes is None:
        logger.warning("INT8 unknown-product limits: the recogniser was not found in the model; limits kept.")
        return None
    limits_constant, features_output = nodes
    dataset, names = labelled
    index_of = {name: index for index, name in enumerate(category_names)}
    categories = np.array([index_of.get(name, -1) for name in names])
    loader = DataLoader(
        dataset,
        batch_size=_static_batch_size(ov_model),
        shuffle=False,
        num_workers=getattr(datamodule, "num_workers", 0),
        collate_fn=getattr(dataset, "collate_fn", None),
    )
    logger.info("INT8 unknown-product limits: describing %d labelled training normals.", len(categories))
    features = _quantized_features(ov_model, features_output, loader, input_size)
    prototypes = recognizer.prototypes.detach().float().cpu().numpy()
    old_limits = recognizer.distance_limits.detach().float().cpu().numpy()
    new_limits = old_limits.copy()
    report: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(category_names):
        own = categories == index
        distances = 1.0 - features[own] @ prototypes[index]
        entry: dict[str, Any] = {"float_limit": float(old_limits[index]), "images": int(own.sum())}
        if own.sum() < 2 or not np.isfinite(old_limits[index]):
            logger.warning("INT8 unknown-product limits: %s has too few labelled normals; its limit is kept.", name)
            entry.update(limit=float(old_limits[index]), rule="kept")
        else:
            result = false_alarm_threshold(torch.from_numpy(distances), recognizer.rejection_rate)
            new_limits[index] = result.threshold
            entry.update(result.as_dict(), limit=float(new_limits[index]))
            entry["float_limit_rejects"] = float((distances > old_limits[index]).mean())
            logger.info(
                "INT8 unknown-product limit of %s: %.6g -> %.6g (floating-point limit rejected %.1f %% of its %d "
                "normals at INT8; budget %.1f %%).",
                name,
                old_limits[index],
                new_limits[index],
                100 * entry["float_limit_rejects"],
                entry["images"],
                100 * recognizer.rejection_rate,
            )
        report[name] = entry
    _replace_constant(ov_model, limits_constant, new_limits.astype(np.float32))
    ov_model.set_rt_info(json.dumps(report), RT_INFO_PATH)
    return report


def _static_batch_size(ov_model: "ov.Model") -> int:
    """The model's static batch size, else 1."""
    batch = ov_model.input(0).partial_shape[0]
    return batch.get_length() if batch.is_static else 1


def _replace_constant(ov_model: "ov.Model", constant: Any, values: np.ndarray) -> None:
    """Put ``values`` in place of ``constant`` in every operation that reads it."""
    from openvino import op

    replacement = op.Constant(values)
    replacement.set_friendly_name(constant.get_friendly_name())
    constant.output(0).replace(replacement.output(0))
    ov_model.validate_nodes_and_infer_types()


def read_refitted_limits(ov_model: "ov.Model") -> dict[str, dict[str, Any]]:
    """The re-fitted limits recorded in an INT8 IR (empty for a model without them)."""
    if not ov_model.has_rt_info(RT_INFO_PATH):
        return {}
    return json.loads(ov_model.get_rt_info(RT_INFO_PATH).astype(str))
