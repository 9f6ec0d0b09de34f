# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""OpenVINO export of Dcam at every precision, with INT8 quantization that fits a teacher-student model.

anomalib's ``to_openvino`` converts the ONNX export to OpenVINO and compresses it with NNCF. For ``INT8_PTQ`` and
``INT8_ACQ`` this module replaces the two NNCF steps (``_post_training_quantization_ov`` and
``_accuracy_control_quantization_ov``) with versions that:

- calibrate at the exported input size: every calibration and validation image is resized to the IR's static input
  size, whatever the size of the data images (anomalib feeds them unresized, which a static-shape IR rejects);
- accept a calibration datamodule from :mod:`anomalib_dcam.deploy.calibration` (training normals, random-normal
  noise, or normals with synthetic anomalies); any other datamodule calibrates on its ``val_dataloader()``, as in
  anomalib;
- keep the anomaly-map head in floating point: the anomaly score is the cosine distance between teacher and student
  features, a small difference of two nearly equal unit vectors that 8-bit activations would blur. Only the two
  backbones are quantized (``keep_head_fp32``);
- make ``INT8_ACQ`` validate correctly: the metric is reset before every validation (anomalib accumulates it across
  candidates, so every candidate looks like the first), and the default metric is image AUROC on ``pred_score``
  rather than a threshold-dependent F1 score;
- re-fit a unified model's product recognition (prototypes and unknown-product limits) on the quantized teacher's
  own features (:mod:`anomalib_dcam.deploy.recognition_limits`): limits fitted in floating point can be smaller than
  the shift that quantization gives the features of a product whose normals are all alike.

Use it in one of two ways:

- :func:`export_openvino` exports any Dcam (or other anomalib model) from Python;
- :class:`OpenVINOQuantizationMixin`, placed before ``AnomalibModule`` in a model's bases, makes ``model.to_openvino``
  and ``anomalib export`` use these steps.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib_dcam import Dcam
    >>> from anomalib_dcam.deploy import NormalsCalibration, export_openvino
    >>> model = Dcam.load_from_checkpoint("model.ckpt")  # doctest: +SKIP
    >>> calibration = NormalsCalibration(MVTecAD(category="bottle"))  # doctest: +SKIP
    >>> export_openvino(model, "exports", input_size=(256, 256), compression_type="INT8_PTQ",
    ...                 datamodule=calibration)  # doctest: +SKIP
    PosixPath('exports/weights/openvino/model.xml')
"""

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from anomalib.data import AnomalibDataModule, ImageBatch
from anomalib.deploy import CompressionType, ExportType
from anomalib.metrics import AUPRO, AUROC, AnomalibMetric, F1Score
from torch.nn import functional as F  # noqa: N812
from torchmetrics import Metric

from .calibration import CalibrationDataModule
from .categories import model_category_names, set_category_names, write_category_names
from .category_output import CategoryExportMixin, exporting_category, hide_category_output
from .inference import static_batch_size, static_input_size

if TYPE_CHECKING:
    import nncf
    import openvino as ov
    from anomalib.models.components import AnomalibModule
    from anomalib.post_processing import PostProcessor
    from anomalib.pre_processing import PreProcessor

logger = logging.getLogger(__name__)

__all__ = [
    "ACQ_METRICS",
    "OpenVINOQuantizationMixin",
    "anomaly_head_ignored_scope",
    "compress_openvino_model",
    "convert_to_openvino",
    "export_openvino",
    "quantize_post_training",
    "quantize_with_accuracy_control",
    "resolve_acq_metric",
    "save_openvino",
]

# Metric names accepted for INT8_ACQ, with the batch fields they read.
ACQ_METRICS: dict[str, tuple[type[AnomalibMetric], tuple[str, str]]] = {
    "image_auroc": (AUROC, ("pred_score", "gt_label")),
    "pixel_auroc": (AUROC, ("anomaly_map", "gt_mask")),
    "pixel_aupro": (AUPRO, ("anomaly_map", "gt_mask")),
    "image_f1score": (F1Score, ("pred_label", "gt_label")),
    "pixel_f1score": (F1Score, ("pred_mask", "gt_mask")),
}
_METRIC_ALIASES = {"auroc": "image_auroc", "aupro": "pixel_aupro", "f1score": "image_f1score", "f1": "image_f1score"}
# The operation that starts Dcam's anomaly-map head: F.normalize of every feature map.
_HEAD_START_TYPE = "ReduceL2"
# NNCF's default calibration subset size, used for plain datamodules as anomalib does.
_NNCF_SUBSET_SIZE = 300


def compression_type_from(value: CompressionType | str | None) -> CompressionType | None:
    """Parse a compression type; ``None``, ``"FP32"`` and ``"none"`` mean no compression.

    Raises:
        ValueError: If ``value`` is not a compression type.
    """
    if value is None or isinstance(value, CompressionType):
        return value
    text = str(value).strip()
    if text.lower() in {"fp32", "none", ""}:
        return None
    for member in CompressionType:
        if text.lower() in {member.value.lower(), member.name.lower()}:
            return member
    accepted = ", ".join(["FP32", *(member.name for member in CompressionType)])
    msg = f"compression_type={value!r} is not supported; accepted values are {accepted}."
    raise ValueError(msg)


def resolve_acq_metric(metric: Metric | str | None) -> Metric:
    """Return the metric that ``INT8_ACQ`` keeps within ``max_drop``; higher must be better.

    Args:
        metric: A torchmetrics/anomalib metric that reads an ``ImageBatch``, a name from :data:`ACQ_METRICS`
            (``"image_AUROC"``, ``"pixel_AUROC"``, ``"pixel_AUPRO"``, ``"image_F1Score"``, ``"pixel_F1Score"``; the
            short names ``"AUROC"``, ``"AUPRO"`` and ``"F1Score"`` mean the image, pixel and image metric), or
            ``None`` for image AUROC.

    Returns:
        The metric instance.

    Raises:
        ValueError: If ``metric`` is an unknown name.
    """
    if isinstance(metric, Metric):
        return metric
    name = "image_auroc" if metric is None else str(metric).strip().lower()
    name = _METRIC_ALIASES.get(name, name)
    if name not in ACQ_METRICS:
        accepted = ", ".join(["image_AUROC", "pixel_AUROC", "pixel_AUPRO", "image_F1Score", "pixel_F1Score"])
        msg = f"metric={metric!r} is not supported for INT8_ACQ; accepted names are {accepted} (or a Metric)."
        raise ValueError(msg)
    metric_class, fields = ACQ_METRICS[name]
    if metric_class is AUPRO:
        return AUPRO(fields=list(fields), fpr_limit=0.3)
    return metric_class(fields=list(fields))


def pre_processor_stats(
    pre_processor: "PreProcessor | None",
) -> tuple[tuple[int, int] | None, Sequence[float] | None, Sequence[float] | None]:
    """Resize size, normalisation mean and std of an anomalib pre-processor (``None`` where it has none)."""
    from anomalib.data.transforms.utils import extract_transforms_by_type
    from torchvision.transforms.v2 import Normalize, Resize

    transform = getattr(pre_processor, "transform", None)
    if transform is None:
        return None, None, None
    resizes = extract_transforms_by_type(transform, Resize)
    normalizes = extract_transforms_by_type(transform, Normalize)
    size = None
    if resizes and resizes[0].size is not None and len(resizes[0].size) == 2:
        size = (int(resizes[0].size[0]), int(resizes[0].size[1]))
    mean = list(normalizes[0].mean) if normalizes else None
    std = list(normalizes[0].std) if normalizes else None
    return size, mean, std


def anomaly_head_ignored_scope(model: "ov.Model") -> "nncf.IgnoredScope | None":
    """Everything from Dcam's feature normalisation on (distance maps, upsampling, post-processing), for NNCF to skip.

    The head starts where each feature map is L2-normalised (``ReduceL2``); every operation downstream of those is
    left in floating point. Backbones without ``ReduceL2`` (all timm CNNs) are quantized entirely.

    Args:
        model: The OpenVINO model about to be quantized.

    Returns:
        An ignored scope with the head's operations, or ``None`` when the model has no such head.
    """
    import nncf

    frontier = [op for op in model.get_ordered_ops() if op.get_type_name() == _HEAD_START_TYPE]
    names: set[str] = set()
    while frontier:
        node = frontier.pop()
        name = node.get_friendly_name()
        if name in names:
            continue
        names.add(name)
        frontier.extend(target.get_node() for output in node.outputs() for target in output.get_target_inputs())
    if not names:
        logger.info("No %s operation found: the whole model is quantized.", _HEAD_START_TYPE)
        return None
    return nncf.IgnoredScope(names=sorted(names), validate=False)


@contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF logs one INFO line per ignored operation; keep warnings only while quantizing."""
    import nncf

    level = nncf.nncf_logger.level
    nncf.set_log_level(logging.WARNING)
    try:
        yield
    finally:
        nncf.set_log_level(level)


def _batch_images(item: object) -> torch.Tensor:
    """The image tensor of a batch: an ``ImageBatch``, a mapping with ``"image"`` or a bare tensor."""
    if isinstance(item, torch.Tensor):
        return item
    image = getattr(item, "image", None)
    if image is None and isinstance(item, dict):
        image = item.get("image")
    if not isinstance(image, torch.Tensor):
        msg = f"A calibration batch of type {type(item).__name__} has no image tensor."
        raise TypeError(msg)
    return image


def _resize_images(images: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Resize a ``(B, 3, H, W)`` batch to ``size`` as anomalib's default pre-processor does (bilinear, antialiased)."""
    images = images.float()
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if size is None or tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def _resize_masks(masks: torch.Tensor | None, size: tuple[int, int] | None) -> torch.Tensor | None:
    if masks is None or size is None or tuple(masks.shape[-2:]) == tuple(size):
        return masks
    resized = F.interpolate(masks.float().reshape(-1, 1, *masks.shape[-2:]), size=size, mode="nearest")
    return resized.reshape(*masks.shape[:-2], *size).to(masks.dtype)


def _prepare_datamodule(
    model: "ov.Model",
    datamodule: AnomalibDataModule | None,
    pre_processor: "PreProcessor | None",
    compression: str,
) -> tuple[AnomalibDataModule, tuple[int, int] | None]:
    """Check and set up the datamodule; return it with the IR's static input size (``None`` when dynamic)."""
    if datamodule is None:
        msg = (
            f"compression_type={compression} needs a datamodule (--data on the command line), e.g. "
            "anomalib_dcam.deploy.NormalsCalibration wrapping the training datamodule."
        )
        raise ValueError(msg)
    input_size = static_input_size(model)
    if isinstance(datamodule, CalibrationDataModule):
        size, mean, std = pre_processor_stats(pre_processor)
        datamodule.configure_for_export(image_size=input_size or size, mean=mean, std=std)
    datamodule.setup("fit")
    batch_size = static_batch_size(model)
    if batch_size is not None:
        datamodule.train_batch_size = batch_size
        datamodule.eval_batch_size = batch_size
    return datamodule, input_size


def _calibration_dataset(
    datamodule: AnomalibDataModule,
    input_size: tuple[int, int] | None,
) -> tuple["nncf.Dataset", int]:
    """Calibration batches as an NNCF dataset (images resized to ``input_size``) and how many to use."""
    import nncf

    if isinstance(datamodule, CalibrationDataModule):
        dataloader = datamodule.calibration_dataloader()
        subset_size = len(dataloader)
    else:
        # anomalib calibrates on the validation split; for MVTecAD that is the test set, anomalies included.
        dataloader = datamodule.val_dataloader()
        subset_size = _NNCF_SUBSET_SIZE
    num_images = len(dataloader.dataset)  # type: ignore[arg-type]
    if num_images < _NNCF_SUBSET_SIZE:
        logger.warning("Calibrating INT8 on %d images; >= %d are recommended.", num_images, _NNCF_SUBSET_SIZE)
    return nncf.Dataset(dataloader, lambda item: _resize_images(_batch_images(item), input_size).numpy()), subset_size


def _refit_recognition_limits(
    model: "ov.Model",
    datamodule: AnomalibDataModule,
    post_processor: "PostProcessor | None",
    input_size: tuple[int, int] | None,
) -> None:
    """Re-fit a unified model's product recognition on the quantized model (nothing for other models)."""
    if not getattr(post_processor, "is_multi_category", False):
        return
    from .recognition_limits import refit_recognition

    refit_recognition(
        model,
        post_processor.recognizer,  # type: ignore[union-attr]
        list(post_processor.category_names),  # type: ignore[union-attr]
        datamodule,
        input_size,
    )


def quantize_post_training(
    model: "ov.Model",
    datamodule: AnomalibDataModule | None,
    pre_processor: "PreProcessor | None" = None,
    keep_head_fp32: bool = True,
    post_processor: "PostProcessor | None" = None,
    **quantize_kwargs: Any,
) -> "ov.Model":
    """Quantize an OpenVINO model to INT8 with NNCF post-training quantization (``INT8_PTQ``).

    Args:
        model: The floating-point OpenVINO model.
        datamodule: A calibration datamodule (:mod:`anomalib_dcam.deploy.calibration`) or any anomalib datamodule
            (then its ``val_dataloader()`` is the calibration set, as in anomalib).
        pre_processor: The exported model's pre-processor: gives the calibration image size of a dynamic-shape IR and
            the normalisation for random-normal calibration.
        keep_head_fp32: Leave the anomaly-map head in floating point. Defaults to ``True``.
        post_processor: The exported model's post-processor. For a unified model
            (:class:`~anomalib_dcam.post_processing.CategoryPostProcessor` recognising several categories), the
            prototypes and unknown-product limits are re-fitted on the quantized model's features of the calibration
            datamodule's labelled training normals (:mod:`anomalib_dcam.deploy.recognition_limits`); without such
            images the floating-point ones are kept, with a warning.
        quantize_kwargs: Further arguments of ``nncf.quantize`` (``preset``, ``subset_size``, ...).

    Returns:
        The quantized OpenVINO model.

    Raises:
        ValueError: If no datamodule is given.
    """
    import nncf

    datamodule, input_size = _prepare_datamodule(model, datamodule, pre_processor, "INT8_PTQ")
    calibration, subset_size = _calibration_dataset(datamodule, input_size)
    quantize_kwargs.setdefault("subset_size", subset_size)
    if keep_head_fp32:
        quantize_kwargs.setdefault("ignored_scope", anomaly_head_ignored_scope(model))
    with _quiet_nncf():
        quantized = nncf.quantize(model, calibration, **quantize_kwargs)
    _refit_recognition_limits(quantized, datamodule, post_processor, input_size)
    return quantized


def _output_arrays(result: object) -> dict[str, np.ndarray]:
    """OpenVINO inference results by output name."""
    return {port.get_any_name(): np.asarray(value) for port, value in result.items()}  # type: ignore[attr-defined]


def _validation_function(
    metric: Metric,
    input_size: tuple[int, int] | None,
) -> Callable[[Any, Iterable[Any]], tuple[float, list[float]]]:
    """NNCF validation function: ``metric`` over all validation batches, computed afresh for every candidate."""

    def validate(compiled_model: Any, validation_data: Iterable[Any]) -> tuple[float, list[float]]:
        metric.reset()
        num_items = 0
        for batch in validation_data:
            images = _resize_images(batch.image, input_size)
            outputs = _output_arrays(compiled_model(images.numpy()))
            predictions = {
                name: torch.from_numpy(outputs[name])
                for name in ("pred_score", "pred_label", "anomaly_map", "pred_mask")
                if name in outputs
            }
            if "pred_score" in predictions:
                predictions["pred_score"] = predictions["pred_score"].reshape(-1)
            if "pred_label" in predictions:
                predictions["pred_label"] = predictions["pred_label"].reshape(-1)
            metric.update(
                ImageBatch(
                    image=images,
                    gt_label=batch.gt_label,
                    gt_mask=_resize_masks(batch.gt_mask, input_size),
                    **predictions,
                ),
            )
            num_items += 1
        value = float(metric.compute())
        logger.info("INT8_ACQ validation on %d batches: %s = %.4f", num_items, type(metric).__name__, value)
        # AUROC and friends have no per-batch value. NNCF ranks candidates on up to 300 validation batches, which is
        # the whole set for typical inspection data, so a constant per-batch value only fixes the order of that set.
        return value, [value] * num_items

    return validate


def quantize_with_accuracy_control(
    model: "ov.Model",
    datamodule: AnomalibDataModule | None,
    metric: Metric | str | None = None,
    max_drop: float = 0.01,
    pre_processor: "PreProcessor | None" = None,
    keep_head_fp32: bool = True,
    post_processor: "PostProcessor | None" = None,
    **quantize_kwargs: Any,
) -> "ov.Model":
    """Quantize to INT8 and revert the most harmful layers to floating point until the metric drops <= ``max_drop``.

    Args:
        model: The floating-point OpenVINO model.
        datamodule: A calibration datamodule (calibrates on its calibration images, validates on its
            ``validation_dataloader()``) or any anomalib datamodule (calibrates on ``val_dataloader()`` and validates
            on ``test_dataloader()``, as in anomalib).
        metric: The metric to keep (see :func:`resolve_acq_metric`); ``None`` for image AUROC.
        max_drop: Largest accepted absolute drop of ``metric``, in ``[0, 1]``. Defaults to ``0.01``.
        pre_processor: See :func:`quantize_post_training`.
        keep_head_fp32: See :func:`quantize_post_training`.
        post_processor: See :func:`quantize_post_training`.
        quantize_kwargs: Further arguments of ``nncf.quantize_with_accuracy_control``.

    Returns:
        The quantized OpenVINO model.

    Raises:
        ValueError: If no datamodule is given, ``max_drop`` is outside ``[0, 1]`` or ``metric`` is unknown.
    """
    import nncf

    if isinstance(max_drop, bool) or not 0.0 <= float(max_drop) <= 1.0:
        msg = f"max_drop={max_drop!r} is not accepted; it must be a number in [0, 1] (e.g. 0.01 for one point)."
        raise ValueError(msg)
    metric = resolve_acq_metric(metric)
    datamodule, input_size = _prepare_datamodule(model, datamodule, pre_processor, "INT8_ACQ")
    calibration, subset_size = _calibration_dataset(datamodule, input_size)
    if isinstance(datamodule, CalibrationDataModule):
        validation_loader = datamodule.validation_dataloader()
    else:
        validation_loader = datamodule.test_dataloader()
    quantize_kwargs.setdefault("subset_size", subset_size)
    if keep_head_fp32:
        quantize_kwargs.setdefault("ignored_scope", anomaly_head_ignored_scope(model))
    with _quiet_nncf():
        quantized = nncf.quantize_with_accuracy_control(
            model,
            calibration,
            nncf.Dataset(validation_loader),
            _validation_function(metric, input_size),
            max_drop=float(max_drop),
            **quantize_kwargs,
        )
    _refit_recognition_limits(quantized, datamodule, post_processor, input_size)
    return quantized


def compress_openvino_model(
    model: "ov.Model",
    compression_type: CompressionType | str | None,
    datamodule: AnomalibDataModule | None = None,
    metric: Metric | str | None = None,
    max_drop: float = 0.01,
    pre_processor: "PreProcessor | None" = None,
    keep_head_fp32: bool = True,
    post_processor: "PostProcessor | None" = None,
) -> "ov.Model":
    """Apply a compression type to an OpenVINO model (``FP16`` happens when saving, see :func:`export_openvino`).

    Args:
        model: The floating-point OpenVINO model.
        compression_type: ``None`` (FP32), ``FP16``, ``INT8`` (weights only), ``INT8_PTQ`` or ``INT8_ACQ``.
        datamodule: Calibration (and, for ``INT8_ACQ``, validation) data.
        metric: ``INT8_ACQ`` metric, see :func:`resolve_acq_metric`.
        max_drop: ``INT8_ACQ`` largest accepted metric drop.
        pre_processor: See :func:`quantize_post_training`.
        keep_head_fp32: See :func:`quantize_post_training`.
        post_processor: See :func:`quantize_post_training`; with ``INT8_PTQ`` and ``INT8_ACQ`` a unified model's
            product recognition is re-fitted at INT8. FP32 and FP16 models are returned unchanged.

    Returns:
        The compressed model.
    """
    import nncf

    compression_type = compression_type_from(compression_type)
    if compression_type in {None, CompressionType.FP16}:
        return model
    if compression_type == CompressionType.INT8:
        if getattr(post_processor, "is_multi_category", False):
            logger.warning(
                "INT8 weight compression has no calibration images: the product prototypes and unknown-product limits "
                "fitted in floating point are kept; INT8_PTQ with NormalsCalibration re-fits them at INT8.",
            )
        return nncf.compress_weights(model)
    if compression_type == CompressionType.INT8_PTQ:
        return quantize_post_training(model, datamodule, pre_processor, keep_head_fp32, post_processor)
    return quantize_with_accuracy_control(
        model,
        datamodule,
        metric,
        max_drop,
        pre_processor,
        keep_head_fp32,
        post_processor,
    )


def convert_to_openvino(
    model: "AnomalibModule",
    input_size: tuple[int, int] | None = None,
    onnx_kwargs: dict[str, Any] | None = None,
    ov_kwargs: dict[str, Any] | None = None,
) -> "ov.Model":
    """Convert a trained model to an in-memory floating-point OpenVINO model, as anomalib's ``to_openvino`` does.

    The model goes through its own ``to_onnx`` (for Dcam: teacher and student only, no attention blocks) and
    ``openvino.convert_model``. Convert once and pass clones to :func:`compress_openvino_model` to build several
    precisions from one conversion.

    Args:
        model: The trained model.
        input_size: Static ``(height, width)`` of the input; ``None`` keeps the input size dynamic.
        onnx_kwargs: Extra arguments of ``to_onnx``; the ONNX opset defaults to 18.
        ov_kwargs: Extra arguments of ``openvino.convert_model``.

    Returns:
        The OpenVINO model.
    """
    import openvino as ov

    # The exporter produces opset 18 whatever is asked; asking for it avoids a failed down-conversion attempt.
    onnx_kwargs = {"opset_version": 18, **(onnx_kwargs or {})}
    model.eval()
    with TemporaryDirectory() as onnx_directory:
        # A model without CategoryExportMixin exports its category the same way (a no-op for one that has it).
        with exporting_category(model):
            onnx_path = model.to_onnx(onnx_directory, "model", input_size, **onnx_kwargs)
        hide_category_output(onnx_path, model_category_names(model))
        # The ONNX frontend reads the weights into memory, so the model outlives the temporary file.
        return ov.convert_model(onnx_path, **(ov_kwargs or {}))


def save_openvino(
    model: "ov.Model",
    export_root: str | Path,
    model_file_name: str = "model",
    compression_type: CompressionType | str | None = None,
) -> Path:
    """Save an OpenVINO model where anomalib's export puts it: ``<export_root>/weights/openvino/<name>.xml``.

    Args:
        model: The (compressed) OpenVINO model.
        export_root: Output folder.
        model_file_name: Base name of the ``.xml``/``.bin`` files. Defaults to ``"model"``.
        compression_type: ``FP16`` stores floating-point weights in half precision; anything else keeps FP32 weights.

    Returns:
        Path of the ``.xml`` file.
    """
    import openvino as ov
    from anomalib.models.components.base.export_mixin.utils import create_export_root

    xml_path = create_export_root(export_root, ExportType.OPENVINO) / f"{model_file_name}.xml"
    ov.save_model(model, xml_path, compress_to_fp16=compression_type_from(compression_type) == CompressionType.FP16)
    return xml_path


def export_openvino(
    model: "AnomalibModule",
    export_root: str | Path,
    input_size: tuple[int, int] | None = None,
    compression_type: CompressionType | str | None = None,
    datamodule: AnomalibDataModule | None = None,
    metric: Metric | str | None = None,
    max_drop: float = 0.01,
    model_file_name: str = "model",
    keep_head_fp32: bool = True,
    onnx_kwargs: dict[str, Any] | None = None,
    ov_kwargs: dict[str, Any] | None = None,
) -> Path:
    """Export a trained model to OpenVINO IR at any precision, with this module's INT8 steps.

    Args:
        model: The trained model (e.g. ``Dcam.load_from_checkpoint(...)``).
        export_root: Output folder; the IR is written to ``<export_root>/weights/openvino/<model_file_name>.xml``.
        input_size: Static ``(height, width)`` of the input; ``None`` exports a dynamic input size.
        compression_type: ``None``/``"FP32"``, ``"FP16"``, ``"INT8"`` (weights only), ``"INT8_PTQ"`` or ``"INT8_ACQ"``.
        datamodule: Calibration data for ``INT8_PTQ`` and ``INT8_ACQ`` (see :mod:`anomalib_dcam.deploy.calibration`).
        metric: ``INT8_ACQ`` metric, see :func:`resolve_acq_metric`.
        max_drop: ``INT8_ACQ`` largest accepted absolute metric drop. Defaults to ``0.01``.
        model_file_name: Base name of the ``.xml``/``.bin`` files. Defaults to ``"model"``.
        keep_head_fp32: Leave the anomaly-map head in floating point in INT8 models. Defaults to ``True``.
        onnx_kwargs: Extra arguments of ``to_onnx``; the ONNX opset defaults to 18.
        ov_kwargs: Extra arguments of ``openvino.convert_model``.

    Returns:
        Path of the ``.xml`` file.

    Raises:
        ValueError: If ``compression_type`` is unknown or INT8 quantization lacks a datamodule.
    """
    compression_type = compression_type_from(compression_type)
    if compression_type in {CompressionType.INT8_PTQ, CompressionType.INT8_ACQ} and datamodule is None:
        msg = f"compression_type={compression_type.name} needs datamodule=<calibration datamodule>."
        raise ValueError(msg)
    ov_model = convert_to_openvino(model, input_size, onnx_kwargs, ov_kwargs)
    set_category_names(ov_model, model_category_names(model))
    ov_model = compress_openvino_model(
        ov_model,
        compression_type,
        datamodule=datamodule,
        metric=metric,
        max_drop=max_drop,
        pre_processor=getattr(model, "pre_processor", None),
        keep_head_fp32=keep_head_fp32,
        post_processor=getattr(model, "post_processor", None),
    )
    return save_openvino(ov_model, export_root, model_file_name, compression_type)


class OpenVINOQuantizationMixin(CategoryExportMixin):
    """Replace anomalib's INT8 steps of ``to_openvino`` with this module's (see the module docstring).

    Place it before ``AnomalibModule`` in the bases, e.g. ``class Dcam(OpenVINOQuantizationMixin, AnomalibModule)``.
    ``model.to_openvino(...)`` and ``anomalib export --export_type openvino --compression_type INT8_PTQ|INT8_ACQ``
    then calibrate at the export size, accept the calibration datamodules and keep the anomaly-map head in floating
    point. Set ``keep_head_fp32 = False`` on a model to quantize the head as well. Through
    :class:`~anomalib_dcam.deploy.category_output.CategoryExportMixin`, a unified model's exports keep the recognised
    category inside the graph, so that anomalib's own inferencers read them.
    """

    keep_head_fp32: bool = True

    def to_openvino(self, *args: Any, **kwargs: Any) -> Path:
        """Export as anomalib does, with the category names of a unified model in the IR (see ``deploy.categories``)."""
        xml_path = super().to_openvino(*args, **kwargs)  # type: ignore[misc]
        write_category_names(xml_path, model_category_names(self))
        return xml_path

    def _post_training_quantization_ov(
        self,
        model: "ov.Model",
        datamodule: AnomalibDataModule | None = None,
    ) -> "ov.Model":
        """``INT8_PTQ`` step of ``to_openvino``, see :func:`quantize_post_training`."""
        return quantize_post_training(
            model,
            datamodule,
            getattr(self, "pre_processor", None),
            self.keep_head_fp32,
            getattr(self, "post_processor", None),
        )

    def _accuracy_control_quantization_ov(
        self,
        model: "ov.Model",
        datamodule: AnomalibDataModule | None = None,
        metric: Metric | str | None = None,
        task: object = None,
        max_drop: float = 0.01,
    ) -> "ov.Model":
        """``INT8_ACQ`` step of ``to_openvino``, see :func:`quantize_with_accuracy_control`."""
        del task  # the metric's fields say what is validated
        return quantize_with_accuracy_control(
            model,
            datamodule,
            metric,
            max_drop,
            getattr(self, "pre_processor", None),
            self.keep_head_fp32,
            getattr(self, "post_processor", None),
        )
