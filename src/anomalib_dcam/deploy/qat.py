# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

r"""Quantization-aware training (QAT) of a trained Dcam with NNCF, exported to OpenVINO INT8.

The steps follow NNCF's PyTorch QAT recipe:

1. ``nncf.quantize`` inserts calibrated fake quantizers into the student (``--quantize student``, the default) or
   into student and teacher (``--quantize all``). With ``student`` the teacher stays exact FP32, so the reference
   features the student is compared against are not quantized.
2. The model is fine-tuned for a few epochs with the usual DCAM loss, at a small learning rate. The quantizer scales
   of the student are trained with its weights; the teacher is frozen, its quantizer scales included. Each epoch
   ends with anomalib's validation, which refreshes the post-processor's thresholds and normalisation statistics.
3. The model (pre-processor, teacher and student, anomaly-map head, post-processor) is converted with
   ``openvino.convert_model``; the fake quantizers become OpenVINO ``FakeQuantize`` operations, which the CPU plugin
   runs in INT8. Inputs and outputs carry anomalib's names (``input``; ``pred_score``, ``pred_label``,
   ``anomaly_map``, ``pred_mask``), so ``OpenVINOInferencer`` reads the IR like any anomalib export.

The first QAT run on a machine compiles NNCF's CPU extension (a minute or two); ``NNCF_EXTENSION_LOAD_TIMEOUT`` is
raised to 600 s for it unless set.

Example:
    python -m anomalib_dcam.deploy.qat --ckpt_path model.ckpt --data MVTecAD --data.root ./datasets/MVTecAD \
        --data.category bottle --epochs 2 --quantize student --output results/qat
"""

import os
import sys
import warnings
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from anomalib.data import AnomalibDataModule
from torch import nn

from anomalib_dcam._validation import check_positive, coerce_choice
from anomalib_dcam.categories import CATEGORY_OUTPUT
from anomalib_dcam.deploy.categories import model_category_names, set_category_names
from anomalib_dcam.deploy.category_output import hide_category_result

from .calibration import CalibrationDataModule, CalibrationSource, build_calibration_datamodule
from .quantization import _batch_images, _quiet_nncf, pre_processor_stats

if TYPE_CHECKING:
    import openvino as ov
    from jsonargparse import ArgumentParser

    from anomalib_dcam import Dcam

__all__ = ["QuantizeScope", "export_qat_openvino", "fine_tune", "main", "prepare_qat", "run_qat"]

_OUTPUT_ORDER = ("pred_score", "pred_label", "anomaly_map", "pred_mask", CATEGORY_OUTPUT)
_EXTENSION_TIMEOUT_VARIABLE = "NNCF_EXTENSION_LOAD_TIMEOUT"


class QuantizeScope(str, Enum):
    """Which feature extractors get fake quantizers."""

    STUDENT = "student"
    ALL = "all"


def _export_input_size(model: "Dcam", input_size: Sequence[int] | None) -> tuple[int, int]:
    if input_size is not None:
        size = tuple(int(side) for side in input_size)
        if len(size) != 2 or min(size) < 1:
            msg = f"input_size={input_size!r} is not accepted; pass [height, width] with positive sides."
            raise ValueError(msg)
        return size  # type: ignore[return-value]
    size, _, _ = pre_processor_stats(model.pre_processor)
    if size is None:
        msg = "input_size is required: the model's pre-processor has no Resize to take the export size from."
        raise ValueError(msg)
    return size


def prepare_qat(
    model: "Dcam",
    calibration: CalibrationDataModule,
    scope: QuantizeScope | str = QuantizeScope.STUDENT,
    input_size: Sequence[int] | None = None,
) -> "Dcam":
    """Insert calibrated NNCF fake quantizers into the student (and the teacher with ``scope="all"``), in place.

    Args:
        model: A trained Dcam.
        calibration: Calibration datamodule (see :mod:`anomalib_dcam.deploy.calibration`); its images are resized to
            ``input_size`` and normalised by the model's pre-processor.
        scope: ``"student"`` or ``"all"``. Defaults to ``"student"``.
        input_size: Export ``(height, width)``; defaults to the pre-processor's size.

    Returns:
        The same model, with fake quantizers.
    """
    import nncf

    scope = coerce_choice(scope, QuantizeScope, "quantize")
    # The first use compiles NNCF's CPU extension, which takes longer than NNCF's 60 s default on slow CPUs.
    os.environ.setdefault(_EXTENSION_TIMEOUT_VARIABLE, "600")
    size, mean, std = pre_processor_stats(model.pre_processor)
    calibration.configure_for_export(image_size=_export_input_size(model, input_size or size), mean=mean, std=std)
    calibration.setup("fit")
    loader = calibration.calibration_dataloader()
    transform = model.pre_processor.transform if model.pre_processor else nn.Identity()

    def to_backbone_input(item: object) -> torch.Tensor:
        return transform(_batch_images(item).float())

    dataset = nncf.Dataset(loader, to_backbone_input)
    model.eval()
    # Without the attention blocks and their hooks: NNCF copies the modules it wraps.
    with model.model.without_attention(), _quiet_nncf():
        model.model.student_model = nncf.quantize(model.model.student_model, dataset, subset_size=len(loader))
        if scope == QuantizeScope.ALL:
            model.model.teacher_model = nncf.quantize(model.model.teacher_model, dataset, subset_size=len(loader))
            bind = getattr(model.post_processor, "bind", None)
            if bind is not None:  # the product recognition reads the (now quantized) teacher
                bind(model)
    for parameter in model.model.teacher_model.parameters():
        parameter.requires_grad = False
    return model


def fine_tune(
    model: "Dcam",
    datamodule: AnomalibDataModule,
    epochs: int = 2,
    lr: float = 1e-3,
    accelerator: str = "cpu",
    default_root_dir: str | Path | None = None,
) -> "Dcam":
    """Fine-tune a model with fake quantizers using the DCAM loss, then let validation refresh the post-processor.

    Args:
        model: A Dcam prepared by :func:`prepare_qat`.
        datamodule: The training datamodule (normal images to train on, a validation split for the statistics).
        epochs: Fine-tuning epochs. Defaults to ``2``.
        lr: SGD learning rate (momentum and weight decay stay the model's). Defaults to ``1e-3``.
        accelerator: Lightning accelerator. Defaults to ``"cpu"``.
        default_root_dir: Lightning's working folder.

    Returns:
        The fine-tuned model, in eval mode.
    """
    from lightning.pytorch import Trainer

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        msg = f"epochs={epochs!r} is not accepted; it must be an integer >= 0."
        raise ValueError(msg)
    if epochs == 0:
        return model.eval()
    model.lr = check_positive(lr, "lr")
    trainer = Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,  # an NNCF-wrapped state dict does not load into a plain Dcam
        default_root_dir=default_root_dir,
        enable_model_summary=False,
        **model.trainer_arguments,
    )
    # Lightning keeps each module's mode at the start of fit: train the student, keep the teacher in eval mode.
    model.train()
    model.model.teacher_model.eval()
    trainer.fit(model, datamodule=datamodule)
    return model.eval()


class _InferenceGraph(nn.Module):
    """Pre-processor, torch model and post-processor of an anomalib model, returning a tuple of named outputs.

    ``openvino.convert_model`` traces this module; tracing the LightningModule itself fails on its ``trainer``
    property.
    """

    def __init__(self, model: "Dcam", output_names: Sequence[str]) -> None:
        super().__init__()
        self.pre_processor = model.pre_processor
        self.model = model.model
        self.post_processor = model.post_processor
        self.output_names = tuple(output_names)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.pre_processor:
            image = self.pre_processor(image)
        predictions = self.model(image)
        if self.post_processor:
            predictions = self.post_processor(predictions)
        return tuple(getattr(predictions, name) for name in self.output_names)


def export_qat_openvino(
    model: "Dcam",
    export_root: str | Path,
    input_size: Sequence[int] | None = None,
    model_file_name: str = "model",
) -> Path:
    """Convert a QAT model to an OpenVINO INT8 IR with anomalib's input and output names.

    Args:
        model: A Dcam with fake quantizers (:func:`prepare_qat`, :func:`fine_tune`).
        export_root: Output folder; the IR is written to ``<export_root>/weights/openvino/<model_file_name>.xml``.
        input_size: Static ``(height, width)``; defaults to the pre-processor's size. The batch size stays dynamic.
        model_file_name: Base name of the files. Defaults to ``"model"``.

    Returns:
        Path of the ``.xml`` file.
    """
    import openvino as ov
    from anomalib.deploy import ExportType
    from anomalib.models.components.base.export_mixin.utils import create_export_root

    height, width = _export_input_size(model, input_size)
    model.eval()
    example = torch.zeros(1, 3, height, width)
    with model.model.without_attention(), torch.no_grad(), warnings.catch_warnings():
        # The tracer re-runs the graph to check it; fake quantizers round a few values differently between runs.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        probe = model(example)
        names = [name for name in _OUTPUT_ORDER if getattr(probe, name, None) is not None]
        ov_model = ov.convert_model(_InferenceGraph(model, names), example_input=example, input=[-1, 3, height, width])
    _name_ports(ov_model, names)
    hide_category_result(ov_model)  # anomalib's four outputs; the plugin's readers add the category back
    xml_path = create_export_root(export_root, ExportType.OPENVINO) / f"{model_file_name}.xml"
    set_category_names(ov_model, model_category_names(model))
    ov.save_model(ov_model, xml_path, compress_to_fp16=False)
    return xml_path


def _name_ports(ov_model: "ov.Model", output_names: Sequence[str]) -> None:
    """Give the traced model anomalib's port names (tracing numbers them)."""
    ov_model.inputs[0].get_tensor().set_names({"input"})
    for port, name in zip(ov_model.outputs, output_names, strict=True):
        port.get_tensor().set_names({name})


def run_qat(
    ckpt_path: str | Path,
    datamodule: AnomalibDataModule,
    output: str | Path,
    epochs: int = 2,
    quantize: QuantizeScope | str = QuantizeScope.STUDENT,
    lr: float = 1e-3,
    calibration: CalibrationSource | str = CalibrationSource.NORMALS,
    num_calibration_images: int = 300,
    input_size: Sequence[int] | None = None,
    accelerator: str = "cpu",
) -> Path:
    """Load a Dcam checkpoint, run QAT and export the INT8 IR.

    Args:
        ckpt_path: Lightning checkpoint of a trained Dcam.
        datamodule: The training datamodule.
        output: Output folder; the IR goes to ``<output>/weights/openvino/model.xml``.
        epochs: Fine-tuning epochs. Defaults to ``2``.
        quantize: ``"student"`` or ``"all"``. Defaults to ``"student"``.
        lr: Fine-tuning learning rate. Defaults to ``1e-3``.
        calibration: Calibration source of the initial quantizer ranges: ``"normals"``, ``"random_normal"`` or
            ``"synthetic_anomalies"``. Defaults to ``"normals"``.
        num_calibration_images: Calibration images. Defaults to ``300``.
        input_size: Export ``(height, width)``; defaults to the pre-processor's size.
        accelerator: Lightning accelerator for fine-tuning. Defaults to ``"cpu"``.

    Returns:
        Path of the exported ``.xml`` file.
    """
    from anomalib_dcam import Dcam

    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        msg = f"ckpt_path={str(ckpt_path)!r} does not exist; pass a trained Dcam checkpoint (.ckpt)."
        raise FileNotFoundError(msg)
    model = Dcam.load_from_checkpoint(ckpt_path, map_location="cpu")
    size = _export_input_size(model, input_size)
    calibration_datamodule = build_calibration_datamodule(
        calibration,
        datamodule,
        image_size=size,
        num_images=num_calibration_images,
    )
    prepare_qat(model, calibration_datamodule, quantize, size)
    fine_tune(model, datamodule, epochs=epochs, lr=lr, accelerator=accelerator, default_root_dir=Path(output))
    return export_qat_openvino(model, output, size)


def _parser() -> "ArgumentParser":
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(
        prog="anomalib-dcam qat",
        description="Quantization-aware training of a trained Dcam, exported to OpenVINO INT8.",
    )
    parser.add_argument("--ckpt_path", type=Path, required=True, help="trained Dcam checkpoint (.ckpt)")
    parser.add_subclass_arguments(AnomalibDataModule, "data", required=True, fail_untyped=False)
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs")
    parser.add_argument(
        "--quantize",
        type=Literal["student", "all"],
        default=QuantizeScope.STUDENT.value,
        help="quantize the student only (the teacher stays FP32) or both",
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate")
    parser.add_argument(
        "--calibration",
        type=Literal["normals", "random_normal", "synthetic_anomalies"],
        default=CalibrationSource.NORMALS.value,
        help="images that set the initial quantizer ranges",
    )
    parser.add_argument("--num_calibration_images", type=int, default=300, help="calibration images")
    parser.add_argument("--input_size", type=tuple[int, int] | None, default=None, help="export [height,width]")
    parser.add_argument("--output", type=Path, default=Path("results/qat"), help="output folder")
    parser.add_argument("--accelerator", type=str, default="cpu", help="Lightning accelerator")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m anomalib_dcam.deploy.qat`` (or ``anomalib-dcam qat``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a checkpoint carries the teacher: the hub is never needed
    parser = _parser()
    config = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    datamodule = parser.instantiate_classes(config).data
    xml_path = run_qat(
        ckpt_path=config.ckpt_path,
        datamodule=datamodule,
        output=config.output,
        epochs=config.epochs,
        quantize=config.quantize,
        lr=config.lr,
        calibration=config.calibration,
        num_calibration_images=config.num_calibration_images,
        input_size=config.input_size,
        accelerator=config.accelerator,
    )
    print(f"QAT INT8 OpenVINO model written to {xml_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
