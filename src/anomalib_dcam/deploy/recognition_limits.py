# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Product recognition of a unified model, re-fitted at the precision of its INT8 IR.

A unified model flags an image as an unknown product when the cosine distance of its teacher's pooled features to the
nearest category prototype exceeds that category's limit
(:class:`~anomalib_dcam.post_processing.category.CategoryRecognizer`). Prototypes and limits are fitted on
floating-point training features, and a product whose normal images are all alike gets a very small limit. INT8
quantization of the teacher moves every feature of a product by a little, mostly in one common direction, and for such
a product that is more than its limit: every one of its images, normal or not, is then rejected as unknown.

:func:`refit_recognition` fits the recogniser again on the quantized model's *own* features, with the training rule
(:meth:`CategoryRecognizer.fit <anomalib_dcam.post_processing.category.CategoryRecognizer.fit>`: each prototype the
mean of its category's features, each limit from the leave-one-out distances of its normals at the model's
``unknown_rejection_rate``). It reads the pooled features from a copy of the INT8 graph (the recogniser's feature
input added as an output) for every normal training image whose category is known, and writes the new prototypes and
limits into the constants of the IR; the teacher, the student and the rest of the post-processing are untouched. The
old and new limits are logged and recorded in the IR's ``rt_info`` under :data:`RT_INFO_PATH`.

Why the prototypes too, and not the limits alone: the quantization shift is mostly common to a product's images, so
against the floating-point prototype every normal looks farther away, and a limit re-fitted there has to grow by the
whole shift (ten times, for bottle), which also lets through unknown products that were rejected before. Centred on
the quantized features, each limit only has to cover the spread of the product's normals, as in floating point, and
stays close to its floating-point value; a limit grows only where quantization spreads the normals themselves. Why
not keep recognition in floating point: its head already is (it lies in the anomaly-head ignored scope), but its
input comes from the quantized teacher.

All the training normals are used, not the calibration subset, so that the prototypes are the means of the same
images as at training and each limit has the ~100 normals per category that a 1 % order statistic needs.
"""

import json
import logging
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader

if TYPE_CHECKING:
    import openvino as ov

    from anomalib_dcam.post_processing.category import CategoryRecognizer

logger = logging.getLogger(__name__)

__all__ = ["RT_INFO_PATH", "RecognitionNodes", "find_recognition_nodes", "read_refitted_limits", "refit_recognition"]

RT_INFO_PATH = ["anomalib_dcam", "unknown_limits"]
"""Where an INT8 IR records its re-fitted recognition (a JSON mapping of category name to limits and counts)."""


class RecognitionNodes(NamedTuple):
    """Where the recogniser lives in an exported graph."""

    limits: Any
    """The constant of the per-category distance limits."""
    prototypes: Any
    """The constant of the prototypes, ``(K, D)`` or transposed."""
    features: Any
    """The output that feeds the pooled features to the recogniser."""


def _constants_equal_to(ov_model: "ov.Model", values: np.ndarray) -> list[Any]:
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


def find_recognition_nodes(ov_model: "ov.Model", recognizer: "CategoryRecognizer") -> RecognitionNodes | None:
    """The limits and prototypes constants of an exported unified model and the output that feeds its features.

    They are found by value, which survives the renaming of ONNX export and OpenVINO conversion: the constants hold
    ``recognizer.distance_limits`` and ``recognizer.prototypes``; the features are the other input of the product with
    the prototypes.

    Args:
        ov_model: The exported model (floating point or quantized; NNCF leaves the recogniser in floating point).
        recognizer: The recogniser the model was exported with.

    Returns:
        The nodes, or ``None`` when one of them is not found exactly once.
    """
    limits = _constants_equal_to(ov_model, recognizer.distance_limits.detach().float().cpu().numpy())
    prototypes = _constants_equal_to(ov_model, recognizer.prototypes.detach().float().cpu().numpy())
    if len(limits) != 1 or len(prototypes) != 1:
        return None
    products = [target.get_node() for target in prototypes[0].output(0).get_target_inputs()]
    if len(products) != 1 or products[0].get_type_name() != "MatMul":
        return None
    features = [
        products[0].input(index).get_source_output()
        for index in range(2)
        if products[0].input(index).get_source_output().get_node() != prototypes[0]
    ]
    return RecognitionNodes(limits[0], prototypes[0], features[0]) if len(features) == 1 else None


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


def _keep_floating_point(reason: str) -> None:
    logger.warning(
        "INT8 product recognition: %s; the prototypes and unknown-product limits fitted in floating point are kept, "
        "and quantization may move known products' normals beyond them.",
        reason,
    )


def refit_recognition(
    ov_model: "ov.Model",
    recognizer: "CategoryRecognizer",
    category_names: list[str],
    datamodule: object,
    input_size: tuple[int, int] | None,
) -> dict[str, dict[str, Any]] | None:
    """Re-fit a unified model's prototypes and unknown-product limits on the quantized model's features, in place.

    See the module docstring. Without normal images of every category with their category (a datamodule that is not
    a :class:`~anomalib_dcam.deploy.calibration.CalibrationDataModule` wrapping the unified training datamodule, or
    one that lacks a category) the floating-point recognition is kept, with a warning.

    Args:
        ov_model: The quantized model, changed in place.
        recognizer: The recogniser the model was exported with (prototypes, limits, rule and rejection rate); left
            unchanged.
        category_names: The model's category names, in the recogniser's order.
        datamodule: The calibration datamodule of the quantization.
        input_size: The model's static input size (``None`` for a dynamic one).

    Returns:
        Per category: the floating-point and re-fitted limits, the cosine between the two prototypes and how the new
        limit was set; ``None`` when nothing was re-fitted.
    """
    from anomalib_dcam.deploy.calibration import CalibrationDataModule
    from anomalib_dcam.deploy.inference import static_batch_size
    from anomalib_dcam.post_processing.category import CategoryRecognizer

    labelled = datamodule.labelled_normals() if isinstance(datamodule, CalibrationDataModule) else None
    if labelled is None:
        _keep_floating_point(
            "the calibration data gives no normal images with their categories (use NormalsCalibration around the "
            "unified training datamodule)",
        )
        return None
    dataset, names = labelled
    index_of = {name: index for index, name in enumerate(category_names)}
    categories = torch.tensor([index_of.get(name, -1) for name in names])
    counts = torch.bincount(categories[categories >= 0], minlength=len(category_names))
    if (counts < 2).any():
        missing = [name for name, count in zip(category_names, counts.tolist(), strict=True) if count < 2]
        _keep_floating_point(f"fewer than two labelled normals of {', '.join(missing)}")
        return None
    nodes = find_recognition_nodes(ov_model, recognizer)
    if nodes is None:
        _keep_floating_point("the recogniser's constants were not found in the model")
        return None
    loader = DataLoader(
        dataset,
        batch_size=static_batch_size(ov_model) or 1,
        shuffle=False,
        num_workers=getattr(datamodule, "num_workers", 0),
        collate_fn=getattr(dataset, "collate_fn", None),
    )
    logger.info("INT8 product recognition: describing %d labelled training normals.", len(categories))
    features = torch.from_numpy(_quantized_features(ov_model, nodes.features, loader, input_size))
    known = categories >= 0
    refitted = CategoryRecognizer(recognizer.unknown_margin, recognizer.rejection_rate)
    rules = refitted.fit(features[known], categories[known], len(category_names))
    old_limits = recognizer.distance_limits.detach().float().cpu()
    agreement = (refitted.prototypes * recognizer.prototypes.detach().float().cpu()).sum(dim=1)
    report: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(category_names):
        old, new = float(old_limits[index]), float(refitted.distance_limits[index])
        report[name] = {
            **rules[index],
            "float_limit": old,
            "limit": new,
            "prototype_cosine": float(agreement[index]),
            "images": int(counts[index]),
        }
        logger.info(
            "INT8 unknown-product limit of %s: %.6g -> %.6g (cosine distance to its prototype re-centred on the INT8 "
            "features, cosine %.4f to the floating-point one; %d normals, budget %.1f %%).",
            name,
            old,
            new,
            float(agreement[index]),
            int(counts[index]),
            100 * recognizer.rejection_rate,
        )
    _replace_constant(ov_model, nodes.limits, refitted.distance_limits.numpy())
    prototypes = refitted.prototypes.numpy()
    transposed = tuple(nodes.prototypes.get_output_shape(0)) != prototypes.shape
    _replace_constant(ov_model, nodes.prototypes, prototypes.T if transposed else prototypes)
    ov_model.set_rt_info(json.dumps(report), RT_INFO_PATH)
    return report


def _replace_constant(ov_model: "ov.Model", constant: Any, values: np.ndarray) -> None:
    """Put ``values`` (float32) in place of ``constant`` in every operation that reads it."""
    from openvino import op

    replacement = op.Constant(np.ascontiguousarray(values, dtype=np.float32))
    replacement.set_friendly_name(constant.get_friendly_name())
    constant.output(0).replace(replacement.output(0))
    ov_model.validate_nodes_and_infer_types()


def read_refitted_limits(ov_model: "ov.Model") -> dict[str, dict[str, Any]]:
    """The re-fitted recognition recorded in an INT8 IR, per category (empty for a model without it)."""
    if not ov_model.has_rt_info(RT_INFO_PATH):
        return {}
    return json.loads(ov_model.get_rt_info(RT_INFO_PATH).astype(str))
