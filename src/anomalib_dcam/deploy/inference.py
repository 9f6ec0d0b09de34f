# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Run an exported Dcam IR with OpenVINO at a stated inference precision.

OpenVINO's CPU plugin computes in bf16 by default on CPUs with native bf16 (AMX or AVX512-BF16), and in f16 on some
ARM CPUs, even for an FP32 IR. Dcam's anomaly score is the cosine distance between nearly equal teacher and student
features, so the lower precision shifts scores noticeably. Compile with ``INFERENCE_PRECISION_HINT=f32`` for parity
with PyTorch, and state the hint next to every latency figure. INT8 layers of a quantized IR run in INT8 whatever the
hint; the hint applies to the layers left in floating point.

Example:
    >>> from anomalib_dcam.deploy import openvino_inferencer
    >>> inferencer = openvino_inferencer("weights/openvino/model.xml", precision_hint="f32")  # doctest: +SKIP
    >>> inferencer.predict("image.png").pred_score  # doctest: +SKIP
"""

from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomalib.data import NumpyImageBatch
from anomalib.deploy import OpenVINOInferencer

from anomalib_dcam.deploy.categories import category_name, read_category_names_from_file

if TYPE_CHECKING:
    import numpy as np
    import openvino as ov
    import torch
    from PIL.Image import Image as PILImage

__all__ = ["PRECISION_HINTS", "compile_openvino", "openvino_config", "openvino_inferencer", "static_input_size"]

PRECISION_HINTS = ("f32", "bf16", "f16", "default")
"""Accepted ``precision_hint`` values; ``"default"`` leaves the device's own choice (bf16 on bf16-capable CPUs)."""

PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


def openvino_config(
    precision_hint: str = "f32",
    performance_hint: str | None = None,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """OpenVINO compile configuration for a precision hint.

    Args:
        precision_hint: ``"f32"`` (parity with PyTorch), ``"bf16"``, ``"f16"`` or ``"default"``. Defaults to ``"f32"``.
        performance_hint: ``"LATENCY"``, ``"THROUGHPUT"`` or ``None`` (device default).
        num_threads: Inference threads; ``None`` lets OpenVINO decide.

    Returns:
        The configuration dictionary for ``Core.compile_model`` or ``OpenVINOInferencer(config=...)``.

    Raises:
        ValueError: If a hint is not one of the accepted values or ``num_threads`` is not positive.
    """
    hint = str(precision_hint).lower()
    if hint not in PRECISION_HINTS:
        msg = f"precision_hint={precision_hint!r} is not supported; accepted values are {', '.join(PRECISION_HINTS)}."
        raise ValueError(msg)
    config: dict[str, Any] = {} if hint == "default" else {"INFERENCE_PRECISION_HINT": hint}
    if performance_hint is not None:
        if str(performance_hint).upper() not in PERFORMANCE_HINTS:
            accepted = ", ".join(PERFORMANCE_HINTS)
            msg = f"performance_hint={performance_hint!r} is not supported; accepted values are {accepted}."
            raise ValueError(msg)
        config["PERFORMANCE_HINT"] = str(performance_hint).upper()
    if num_threads is not None:
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            msg = f"num_threads={num_threads!r} is not accepted; it must be an integer >= 1."
            raise ValueError(msg)
        config["INFERENCE_NUM_THREADS"] = num_threads
    return config


def compile_openvino(
    path: str | Path,
    device: str = "CPU",
    precision_hint: str = "f32",
    performance_hint: str | None = None,
    num_threads: int | None = None,
) -> "ov.CompiledModel":
    """Read and compile an IR (``.xml``) or ONNX file with the given hints.

    Args:
        path: The ``.xml`` (with its ``.bin`` beside it) or ``.onnx`` file.
        device: OpenVINO device. Defaults to ``"CPU"``.
        precision_hint: See :func:`openvino_config`.
        performance_hint: See :func:`openvino_config`.
        num_threads: See :func:`openvino_config`.

    Returns:
        The compiled model.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
    """
    import openvino as ov

    path = Path(path)
    if not path.is_file():
        msg = f"model path {str(path)!r} does not exist; pass the exported .xml file."
        raise FileNotFoundError(msg)
    config = openvino_config(precision_hint, performance_hint, num_threads)
    return ov.Core().compile_model(str(path), device, config)


def openvino_inferencer(
    path: str | Path,
    device: str = "CPU",
    precision_hint: str = "f32",
    num_threads: int | None = None,
) -> "OpenVINOInferencer":
    """Create anomalib's OpenVINO inferencer with an explicit precision hint.

    It is a :class:`CategoryOpenVINOInferencer`: anomalib's :class:`~anomalib.deploy.OpenVINOInferencer` that also
    reads a unified model's recognised category.

    The inferencer does not resize: give it images of the exported ``input_size`` (or export with a dynamic input
    size). It writes a compiled-model cache to ``./openvino_cache`` in the working directory.

    Args:
        path: The exported ``.xml`` file.
        device: OpenVINO device. Defaults to ``"CPU"``.
        precision_hint: See :func:`openvino_config`. Defaults to ``"f32"``.
        num_threads: See :func:`openvino_config`.

    Returns:
        The inferencer.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"model path {str(path)!r} does not exist; pass the exported .xml file."
        raise FileNotFoundError(msg)
    config = openvino_config(precision_hint, num_threads=num_threads)
    return CategoryOpenVINOInferencer(path, device=device, config=config)


def static_input_size(model: "str | Path | ov.Model") -> tuple[int, int] | None:
    """``(height, width)`` of an IR's NCHW image input when both are static, else ``None``.

    Args:
        model: The exported ``.xml`` / ``.onnx`` file, or a model read from it.

    Returns:
        The static input size, or ``None`` when the model accepts any size (it then resizes inside the graph).
    """
    import openvino as ov

    if not isinstance(model, ov.Model):
        model = ov.Core().read_model(str(model))
    shape = model.input(0).partial_shape
    if shape.rank.is_static and shape.rank.get_length() == 4 and shape[2].is_static and shape[3].is_static:
        return shape[2].get_length(), shape[3].get_length()
    return None


class CategoryOpenVINOInferencer(OpenVINOInferencer):
    """anomalib's OpenVINO inferencer, for unified models too: ``pred_category`` and its names are kept.

    anomalib's :class:`~anomalib.deploy.OpenVINOInferencer` builds its result from every IR output and has no
    category field; this subclass sets ``pred_category`` (indices, ``-1`` for an unknown product) and
    ``pred_category_name`` (the names stored in the IR) on the returned batch. Models without the output behave as
    with anomalib's class.
    """

    def __init__(self, path: str | Path, *args: Any, **kwargs: Any) -> None:
        super().__init__(path, *args, **kwargs)
        self.category_names = read_category_names_from_file(path)
        self._category: np.ndarray | None = None

    def post_process(self, predictions: Any) -> dict:  # type: ignore[override]
        """The output dictionary of anomalib's inferencer, without ``pred_category`` (kept for :meth:`predict`)."""
        outputs = super().post_process(predictions)
        self._category = outputs.pop("pred_category", None)
        return outputs

    def predict(self, image: "str | Path | np.ndarray | PILImage | torch.Tensor") -> NumpyImageBatch:
        """Score an image as anomalib does; add ``pred_category`` and ``pred_category_name`` for a unified model."""
        batch = super().predict(image)
        if self._category is not None:
            batch.pred_category = self._category
            batch.pred_category_name = [
                category_name(index, self.category_names) for index in self._category.reshape(-1).tolist()
            ]
        return batch
