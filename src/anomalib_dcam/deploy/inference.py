# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Run an exported Dcam IR with OpenVINO at a stated inference precision.

OpenVINO's CPU plugin computes in bf16 by default on CPUs with native bf16 (AMX or AVX512-BF16), and in f16 on some
ARM CPUs, even for an FP32 IR. Dcam's anomaly score is the cosine distance between nearly equal teacher and student
features, so the lower precision shifts scores noticeably. Compile with ``INFERENCE_PRECISION_HINT=f32`` for parity
with PyTorch, and state the hint next to every latency figure. INT8 layers of a quantized IR run in INT8 whatever the
hint; the hint applies to the layers left in floating point.

The plugin's readers (:func:`compile_openvino`, :func:`openvino_inferencer`, and
:class:`~anomalib_dcam.deploy.OpenVINOModel`) read an IR once and add a unified model's ``pred_category`` tensor back as
an output (:mod:`anomalib_dcam.deploy.category_output`); anomalib's own ``OpenVINOInferencer`` reads the same file with
anomalib's four outputs.

Example:
    >>> from anomalib_dcam.deploy import openvino_inferencer
    >>> inferencer = openvino_inferencer("weights/openvino/model.xml", precision_hint="f32")  # doctest: +SKIP
    >>> inferencer.predict("image.png").pred_score  # doctest: +SKIP
"""

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from anomalib.data import NumpyImageBatch
from anomalib.deploy import OpenVINOInferencer

from anomalib_dcam.categories import CATEGORY_OUTPUT, category_name
from anomalib_dcam.deploy.categories import read_category_names
from anomalib_dcam.deploy.category_output import expose_category_output

if TYPE_CHECKING:
    import openvino as ov
    import torch
    from openvino.utils.data_helpers.wrappers import OVDict
    from PIL.Image import Image as PILImage

__all__ = [
    "ACCEPTED_IMAGES",
    "PRECISION_HINTS",
    "CategoryOpenVINOInferencer",
    "compile_openvino",
    "image_batch",
    "openvino_config",
    "openvino_inferencer",
    "read_openvino_model",
    "static_input_size",
]

ACCEPTED_IMAGES = (
    "an image file path, a PIL image, or a NumPy array or torch tensor of shape (H, W), (H, W, C), (C, H, W), "
    "(N, H, W, C) or (N, C, H, W) with C = 1 (grayscale), 3 (RGB) or 4 (RGBA; the alpha channel is dropped), "
    "of any height and width, uint8, uint16, bool or float in [0, 1] (float above 1 is read as 0-255)"
)
"""What :meth:`CategoryOpenVINOInferencer.predict` and :func:`image_batch` accept."""

_CHANNELS = (1, 3, 4)

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


def read_openvino_model(path: "str | Path | ov.Model") -> "ov.Model":
    """Read an IR (``.xml``) or ONNX file once, with a unified model's ``pred_category`` as an output.

    Args:
        path: The ``.xml`` (with its ``.bin`` beside it) or ``.onnx`` file, or a model already read (returned as it
            is, with the category output added).

    Returns:
        The OpenVINO model, ready to compile.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
    """
    import openvino as ov

    if isinstance(path, ov.Model):
        model = path
    else:
        path = Path(path)
        if not path.is_file():
            msg = f"model path {str(path)!r} does not exist; pass the exported .xml file."
            raise FileNotFoundError(msg)
        model = ov.Core().read_model(str(path))
    expose_category_output(model)
    return model


def compile_openvino(
    path: "str | Path | ov.Model",
    device: str = "CPU",
    precision_hint: str = "f32",
    performance_hint: str | None = None,
    num_threads: int | None = None,
) -> "ov.CompiledModel":
    """Read and compile an IR (``.xml``) or ONNX file with the given hints.

    A unified model's ``pred_category`` tensor is an output of the compiled model (see :func:`read_openvino_model`).

    Args:
        path: The ``.xml`` (with its ``.bin`` beside it) or ``.onnx`` file, or a model read from it.
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

    config = openvino_config(precision_hint, performance_hint, num_threads)
    return ov.Core().compile_model(read_openvino_model(path), device, config)


def openvino_inferencer(
    path: str | Path,
    device: str = "CPU",
    precision_hint: str = "f32",
    num_threads: int | None = None,
) -> "CategoryOpenVINOInferencer":
    """Create anomalib's OpenVINO inferencer with an explicit precision hint.

    It is a :class:`CategoryOpenVINOInferencer`: anomalib's :class:`~anomalib.deploy.OpenVINOInferencer` that also
    returns a unified model's recognised category, takes images of any size and of 1, 3 or 4 channels, and can be
    shared by several threads. It writes a compiled-model cache to ``./openvino_cache`` in the working directory, as
    anomalib's does.

    Args:
        path: The exported ``.xml`` file.
        device: OpenVINO device. Defaults to ``"CPU"``.
        precision_hint: See :func:`openvino_config`. Defaults to ``"f32"``.
        num_threads: See :func:`openvino_config`.

    Returns:
        The inferencer.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
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


def static_batch_size(model: "ov.Model") -> int | None:
    """The static batch size of a model's first input, or ``None`` when it is dynamic."""
    batch = model.input(0).partial_shape[0]
    return batch.get_length() if batch.is_static else None


def _reject(image: object, reason: str) -> ValueError:
    shape = getattr(image, "shape", None)
    described = f"an image of shape {tuple(shape)}" if shape is not None else f"a {type(image).__name__}"
    return ValueError(f"cannot score {described}: {reason}; pass {ACCEPTED_IMAGES}.")


def _as_float(array: np.ndarray) -> np.ndarray:
    """Values in [0, 1] as float32: uint8 / 255, uint16 / 65535, bool as 0/1, float as anomalib reads it."""
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        if array.dtype not in (np.uint8, np.uint16):
            raise _reject(array, f"integer type {array.dtype} has no defined range")
        return array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    if not np.issubdtype(array.dtype, np.floating):
        raise _reject(array, f"type {array.dtype} is not an image type")
    array = array.astype(np.float32)
    # anomalib's OpenVINOInferencer reads float images above 1 as 0-255.
    return array / 255.0 if array.size and float(array.max()) > 1.0 else array


def _to_nchw(array: np.ndarray, channels_first: bool) -> np.ndarray:
    """``(N, C, H, W)`` from any accepted layout; ``channels_first`` breaks ties such as ``(3, 32, 3)``."""
    if array.ndim == 2:
        return array[None, None]
    if array.ndim == 3:
        first, last = array.shape[0] in _CHANNELS, array.shape[-1] in _CHANNELS
        if first and (channels_first or not last):
            return array[None]
        if last:
            return array.transpose(2, 0, 1)[None]
        raise _reject(array, "neither its first nor its last axis is a channel axis of 1, 3 or 4")
    if array.ndim == 4:
        first, last = array.shape[1] in _CHANNELS, array.shape[-1] in _CHANNELS
        if first and (channels_first or not last):
            return array
        if last:
            return array.transpose(0, 3, 1, 2)
        raise _reject(array, "neither axis 1 nor its last axis is a channel axis of 1, 3 or 4")
    raise _reject(array, f"it has {array.ndim} dimensions")


def image_batch(
    image: "str | Path | np.ndarray | PILImage | torch.Tensor",
    input_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Any accepted image as the model's input: ``(N, 3, H, W)`` float32 RGB in ``[0, 1]``, resized if needed.

    Grayscale is repeated to three channels and the alpha channel of RGBA is dropped, as anomalib's reader
    (``PIL.Image.convert("RGB")``) does. When ``input_size`` is given the image is resized to it, antialiased bilinear,
    as anomalib's pre-processor and :class:`~anomalib_dcam.deploy.OpenVINOModel` do.

    Args:
        image: See :data:`ACCEPTED_IMAGES`.
        input_size: ``(height, width)`` of a static IR input; ``None`` keeps the size (a dynamic IR resizes itself).

    Returns:
        The contiguous input array.

    Raises:
        TypeError: If ``image`` is of another type.
        ValueError: If its shape, channels or type are not accepted; the message lists what is.
    """
    import torch
    from anomalib.data.utils import read_image
    from PIL.Image import Image as PILImage
    from torchvision.transforms.v2.functional import resize

    channels_first = False
    if isinstance(image, str | Path):
        array = read_image(image, as_tensor=False)
    elif isinstance(image, PILImage):
        array = np.asarray(image.convert("RGB"))
    elif isinstance(image, torch.Tensor):
        array, channels_first = image.detach().cpu().numpy(), True
    elif isinstance(image, np.ndarray):
        array = image
    else:
        msg = f"cannot score a {type(image).__name__}; pass {ACCEPTED_IMAGES}."
        raise TypeError(msg)
    batch = _to_nchw(_as_float(np.asarray(array)), channels_first)
    channels = batch.shape[1]
    if channels == 1:
        batch = np.repeat(batch, 3, axis=1)
    elif channels == 4:
        batch = batch[:, :3]
    if input_size is not None and tuple(batch.shape[-2:]) != tuple(input_size):
        batch = resize(torch.from_numpy(np.ascontiguousarray(batch)), list(input_size), antialias=True).numpy()
    return np.ascontiguousarray(batch, dtype=np.float32)


class CategoryOpenVINOInferencer(OpenVINOInferencer):
    """anomalib's OpenVINO inferencer for every exported model: any image, any thread, the recognised product.

    Compared with anomalib's :class:`~anomalib.deploy.OpenVINOInferencer` it

    - reads the IR once, adds a unified model's ``pred_category`` tensor back as an output, and sets
      ``pred_category`` (indices, ``-1`` for an unknown product) and ``pred_category_name`` (the names stored in the
      IR) on the returned batch;
    - takes images of any size, grayscale, RGB or RGBA (:func:`image_batch`), resized to a static IR input as
      anomalib's pre-processor does, and rejects anything else with a message that lists what it accepts;
    - can be shared by several threads: :meth:`predict` keeps no per-call state on the instance, and each thread
      runs its own OpenVINO infer request.

    Args:
        path: The ``.xml`` / ``.onnx`` file, or ``(xml bytes, bin bytes)``.
        device: OpenVINO device. Defaults to ``"AUTO"``, as anomalib's.
        config: OpenVINO compile configuration (see :func:`openvino_config`).
    """

    def __init__(self, path: "str | Path | tuple[bytes, bytes]", *args: Any, **kwargs: Any) -> None:
        self.category_names: list[str] = []
        self.input_size: tuple[int, int] | None = None
        self.has_category = False
        self._requests = threading.local()
        super().__init__(path, *args, **kwargs)

    def load_model(self, path: "str | Path | tuple[bytes, bytes]") -> tuple[Any, Any, Any]:
        """Read the model once, add the category output, and compile it (cache in ``./openvino_cache``).

        Returns:
            Input port, first output port and compiled model, as anomalib's ``load_model``.

        Raises:
            ValueError: If ``path`` is not an ``.xml``, ``.bin`` or ``.onnx`` file.
        """
        import openvino as ov

        core = ov.Core()
        if isinstance(path, tuple):
            model = core.read_model(model=path[0], weights=path[1])
        else:
            path = Path(path)
            if path.suffix not in {".xml", ".bin", ".onnx"}:
                msg = f"Path must be .onnx, .bin or .xml file. Got {path.suffix}"
                raise ValueError(msg)
            model = core.read_model(str(path.with_suffix(".xml") if path.suffix == ".bin" else path))
        self.has_category = expose_category_output(model)
        self.category_names = read_category_names(model)
        self.input_size = static_input_size(model)
        cache_folder = Path("openvino_cache")
        cache_folder.mkdir(exist_ok=True)
        core.set_property({"CACHE_DIR": str(cache_folder)})
        compiled = core.compile_model(model=model, device_name=self.device, config=self.config)
        return compiled.input(0), compiled.output(0), compiled

    def _infer_request(self) -> "ov.InferRequest":
        """This thread's infer request (one per thread: a request runs one inference at a time)."""
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self.model.create_infer_request()
            self._requests.request = request
        return request

    def pre_process(self, image: "np.ndarray") -> np.ndarray:  # type: ignore[override]
        """The model's input for an image (see :func:`image_batch`), at the IR's static input size."""
        return image_batch(image, self.input_size)

    @staticmethod
    def post_process(predictions: "OVDict") -> dict:
        """Every output of the model by name, ``pred_category`` included."""
        names = [next(iter(names)) for names in predictions.names()]
        return dict(zip(names, predictions.to_tuple(), strict=True))

    def predict(self, image: "str | Path | np.ndarray | PILImage | torch.Tensor") -> NumpyImageBatch:
        """Score an image as anomalib does; add ``pred_category`` and ``pred_category_name`` for a unified model.

        Args:
            image: See :data:`ACCEPTED_IMAGES`.

        Returns:
            anomalib's ``NumpyImageBatch`` of the prediction.

        Raises:
            TypeError: If ``image`` is of a type that is not accepted.
            ValueError: If its shape, channels or type are not accepted; the message lists what is.
        """
        batch_input = self.pre_process(image)
        results = self._infer_request().infer({self.input_blob.any_name: batch_input})
        outputs = self.post_process(results)
        category = outputs.pop(CATEGORY_OUTPUT, None)
        batch = NumpyImageBatch(image=batch_input, **outputs)
        if category is not None:
            batch.pred_category = category
            batch.pred_category_name = [
                category_name(index, self.category_names) for index in category.reshape(-1).tolist()
            ]
        return batch
