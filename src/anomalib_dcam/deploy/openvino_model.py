# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

r"""Run an exported OpenVINO IR inside anomalib's ``Engine``: ``anomalib predict`` and ``anomalib test`` on the IR.

anomalib's ``predict`` and ``test`` subcommands take an :class:`~anomalib.models.AnomalibModule` and a Lightning
checkpoint. :class:`OpenVINOModel` is an ``AnomalibModule`` whose network is a compiled OpenVINO model, so the same
subcommands, datamodules, visualiser and metrics run on the deployed artefact, FP32, FP16 or INT8, instead of the
PyTorch weights:

.. code-block:: bash

    anomalib predict --model anomalib_dcam.deploy.OpenVINOModel \
        --model.path results/exported/weights/openvino/model.xml --data path/to/images
    anomalib test --model anomalib_dcam.deploy.OpenVINOModel \
        --model.path results/exported/weights/openvino/model.xml \
        --data MVTecAD --data.root ./datasets/MVTecAD --data.category bottle

The IR already holds the model's normalisation, thresholds and min-max scaling (anomalib exports the pre-processor,
the network and the post-processor as one graph), so this module adds no post-processor. When the IR's input size is
static, the pre-processor only resizes images to it (antialiased, as anomalib's own pre-processor does before the
export), so images of any size can be scored.
"""

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from anomalib import LearningType
from anomalib.data import Batch, InferenceBatch
from anomalib.metrics import Evaluator
from anomalib.models import AnomalibModule
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from torch import nn
from torchvision.transforms.v2 import Resize

from anomalib_dcam.categories import CATEGORY_OUTPUT, category_name
from anomalib_dcam.deploy.categories import read_category_names
from anomalib_dcam.deploy.inference import compile_openvino, read_openvino_model, static_input_size
from anomalib_dcam.post_processing.category import CategoryInferenceBatch

if TYPE_CHECKING:
    import openvino as ov
    from lightning.pytorch.utilities.types import STEP_OUTPUT

__all__ = ["OpenVINOInferenceModel", "OpenVINOModel"]

logger = logging.getLogger(__name__)

OUTPUT_NAMES = ("pred_score", "pred_label", "anomaly_map", "pred_mask")
"""Outputs of an anomalib IR, in :class:`~anomalib.data.InferenceBatch` order."""

BOOLEAN_OUTPUTS = frozenset({"pred_label", "pred_mask"})
"""Outputs exported as ``int8`` that anomalib's batches hold as booleans."""


class OpenVINOInferenceModel(nn.Module):
    """A compiled OpenVINO anomaly model behind the interface of anomalib's torch models.

    ``forward`` takes a float image batch ``(N, C, H, W)`` in ``[0, 1]`` (C = 3; 1, grayscale, is repeated to RGB and
    4, RGBA, loses its alpha channel, as anomalib's image reader does) and returns an
    :class:`~anomalib.data.InferenceBatch` of the IR's outputs as tensors on the input's device.

    Args:
        compiled_model: The compiled model (see :func:`~anomalib_dcam.deploy.compile_openvino`).

    Raises:
        ValueError: If the model has none of anomalib's outputs (``pred_score``, ``pred_label``, ``anomaly_map``,
            ``pred_mask``), which means it was not exported by anomalib.
    """

    def __init__(self, compiled_model: "ov.CompiledModel") -> None:
        super().__init__()
        self.compiled_model = compiled_model
        self.output_names = {name for output in compiled_model.outputs for name in output.names}
        if not self.output_names & set(OUTPUT_NAMES):
            msg = (
                f"the OpenVINO model has outputs {sorted(self.output_names)}, none of {', '.join(OUTPUT_NAMES)}; "
                "pass an IR exported by anomalib (anomalib export --export_type openvino, or model.to_openvino)."
            )
            raise ValueError(msg)

    def forward(self, image: torch.Tensor) -> InferenceBatch:
        """Score a batch of images with the compiled model.

        Args:
            image: Float images ``(N, C, H, W)`` in ``[0, 1]`` with C = 1, 3 or 4, at the IR's input size when it is
                static.

        Returns:
            The IR's predictions: scores, labels, anomaly maps and masks, as the exported post-processor made them,
            and ``pred_category`` (a :class:`~anomalib_dcam.post_processing.CategoryInferenceBatch`) for a unified
            model with per-category post-processing.
        """
        if image.dim() != 4 or image.shape[1] not in {1, 3, 4}:
            msg = (
                f"cannot score images of shape {tuple(image.shape)}: pass float images (N, C, H, W) in [0, 1] with "
                "C = 3 (RGB), 1 (grayscale) or 4 (RGBA, alpha dropped)."
            )
            raise ValueError(msg)
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        elif image.shape[1] == 4:
            image = image[:, :3]
        results = self.compiled_model(image.detach().to("cpu", torch.float32).contiguous().numpy())
        outputs: dict[str, torch.Tensor] = {}
        for output, value in results.items():
            name = next((name for name in output.names if name in (*OUTPUT_NAMES, CATEGORY_OUTPUT)), None)
            if name is None:
                continue
            tensor = torch.from_numpy(value).to(image.device)
            outputs[name] = tensor.bool() if name in BOOLEAN_OUTPUTS else tensor
        if CATEGORY_OUTPUT in outputs:
            return CategoryInferenceBatch(**outputs)
        return InferenceBatch(**outputs)


class OpenVINOModel(AnomalibModule):
    """An exported OpenVINO IR as an anomalib model, for ``Engine.predict`` and ``Engine.test``.

    Inference only: there are no trainable parameters, and ``fit`` raises. The IR holds the pre-processing it was
    exported with, the network and the post-processing (thresholds, normalisation), so no post-processor is added.

    Args:
        path: The exported ``.xml`` (with its ``.bin`` beside it) or ``.onnx`` file.
        openvino_device: OpenVINO device, e.g. ``"CPU"``, ``"GPU"`` or ``"AUTO"``. Defaults to ``"CPU"``.
        precision_hint: ``INFERENCE_PRECISION_HINT`` for the layers left in floating point: ``"f32"`` (parity with
            PyTorch; the default), ``"bf16"``, ``"f16"`` or ``"default"`` (the device's choice, bf16 on bf16-capable
            CPUs, which shifts scores).
        num_threads: OpenVINO inference threads; ``None`` lets OpenVINO decide.
        pre_processor: ``True`` resizes images to the IR's static input size (nothing when the input size is
            dynamic, since the exported graph then resizes itself); ``False`` passes images through unchanged; or a
            :class:`~anomalib.pre_processing.PreProcessor`. Images must be float tensors in ``[0, 1]``, as anomalib's
            datasets give them; the IR normalises them itself.
        evaluator: ``True`` for anomalib's default metrics in ``anomalib test``, ``False`` or an ``Evaluator``.
        visualizer: ``True`` saves anomalib's image visualisations (heat maps, masks) under the run's ``images``
            folder, ``False`` or a ``Visualizer``.

    Raises:
        FileNotFoundError: If ``path`` or the ``.bin`` beside an ``.xml`` does not exist.
        ValueError: If ``path`` is not an ``.xml`` or ``.onnx`` file, a hint is not accepted, or the model was not
            exported by anomalib.

    Example:
        >>> from anomalib.engine import Engine
        >>> from anomalib_dcam.deploy import OpenVINOModel
        >>> model = OpenVINOModel("results/exported/weights/openvino/model.xml")  # doctest: +SKIP
        >>> predictions = Engine().predict(model, data_path="path/to/images")  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | Path,
        openvino_device: str = "CPU",
        precision_hint: str = "f32",
        num_threads: int | None = None,
        pre_processor: PreProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        path = Path(path)
        if path.suffix.lower() not in {".xml", ".onnx"}:
            msg = f"path={str(path)!r} is not an OpenVINO IR (.xml) or ONNX (.onnx) file."
            raise ValueError(msg)
        if not path.is_file():
            msg = f"path={str(path)!r} does not exist; pass the exported model.xml (or model.onnx)."
            raise FileNotFoundError(msg)
        if path.suffix.lower() == ".xml" and not path.with_suffix(".bin").is_file():
            msg = f"path={str(path)!r} has no weights file {str(path.with_suffix('.bin'))!r} beside it."
            raise FileNotFoundError(msg)

        ov_model = read_openvino_model(path)  # the one read of the file: size, names and compiled model come from it
        self.ir_input_size = static_input_size(ov_model)
        if pre_processor is True:
            pre_processor = self.configure_ir_pre_processor(self.ir_input_size)
        super().__init__(pre_processor=pre_processor, post_processor=False, evaluator=evaluator, visualizer=visualizer)
        self.model = OpenVINOInferenceModel(
            compile_openvino(ov_model, openvino_device, precision_hint=precision_hint, num_threads=num_threads),
        )
        self.category_names = read_category_names(ov_model)
        # anomalib's Engine warns that no checkpoint was loaded; say where the weights come from instead.
        logger.info(
            "Scoring with the OpenVINO model %s on %s (INFERENCE_PRECISION_HINT=%s, input size %s).",
            path,
            openvino_device,
            precision_hint,
            "dynamic" if self.ir_input_size is None else "x".join(map(str, self.ir_input_size)),
        )

    @staticmethod
    def configure_ir_pre_processor(input_size: tuple[int, int] | None) -> PreProcessor | bool:
        """Resize to a static IR input size, antialiased like anomalib's default pre-processor; nothing if dynamic."""
        if input_size is None:
            return False
        return PreProcessor(transform=Resize(input_size, antialias=True))

    def training_step(self, *args, **kwargs) -> "STEP_OUTPUT":
        """Refuse to train: an exported IR has no trainable weights."""
        del args, kwargs  # Unused.
        msg = (
            "OpenVINOModel runs an exported IR for inference (anomalib predict / anomalib test); it cannot be trained. "
            "Train the PyTorch model (anomalib train --model Dcam ...) and export it again."
        )
        raise RuntimeError(msg)

    def validation_step(self, batch: Batch, *args, **kwargs) -> "STEP_OUTPUT":
        """Score a validation batch with the IR, as ``test_step`` does."""
        return self.test_step(batch, *args, **kwargs)

    def test_step(self, batch: Batch, *args, **kwargs) -> "STEP_OUTPUT":
        """Score a batch with the IR; a unified model's batches also get ``pred_category`` and its names."""
        del args, kwargs
        predictions = self.model(batch.image)
        batch.update(**predictions._asdict())
        category = getattr(predictions, CATEGORY_OUTPUT, None)
        if category is not None:
            batch.pred_category = category
            batch.pred_category_name = [self.category_name(int(index)) for index in category.reshape(-1)]
        return batch

    def predict_step(self, batch: Batch, *args, **kwargs) -> "STEP_OUTPUT":
        """Score a batch with the IR, as ``test_step`` does."""
        return self.test_step(batch, *args, **kwargs)

    def category_name(self, index: int) -> str:
        """Name of a ``pred_category`` value, from the names stored in the IR."""
        return category_name(index, self.category_names)

    def configure_optimizers(self) -> None:
        """No optimiser: there is nothing to train."""
        return

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No model-specific trainer settings."""
        return {}

    @property
    def learning_type(self) -> LearningType:
        """Thresholds and normalisation come from the IR, so no validation pass is needed before predicting."""
        return LearningType.ONE_CLASS

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Accept only an empty state dict: the weights live in the IR, not in a checkpoint."""
        if state_dict:
            msg = (
                "OpenVINOModel takes its weights from the IR given as path; do not pass --ckpt_path. "
                f"Got a checkpoint with {len(state_dict)} tensors."
            )
            raise ValueError(msg)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
