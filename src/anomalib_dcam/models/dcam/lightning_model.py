# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""DCAM: Attend, Distill, Detect (Jena et al., ICPR 2024, arXiv 2405.06467) as an anomalib model.

A frozen ImageNet teacher and a randomly initialised student of the same architecture are matched on a feature
pyramid, as in STFPM. During training, DCAM attention blocks on the student's pyramid levels re-weight what the loss
compares; the loss combines STFPM's pixel cosine distance, a channel cosine distance and a spatial KL distillation.
At inference the blocks are gone: the model is teacher + student, with STFPM's latency.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_dcam import Dcam
    >>> model = Dcam(backbone="tf_efficientnet_lite0")
    >>> engine = Engine(max_epochs=10)
    >>> engine.fit(model=model, datamodule=MVTecAD(category="bottle"))  # doctest: +SKIP

From the command line (the plugin registers the short name, see docs/plugin.md)::

    anomalib train --model Dcam --model.backbone tf_efficientnet_lite0 --data MVTecAD --trainer.max_epochs 10
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT

from anomalib_dcam._validation import check_non_negative, check_positive
from anomalib_dcam.deploy.quantization import OpenVINOQuantizationMixin

from .anomaly_map import CombineMode
from .attention import AttentionPlacement, AttentionType
from .loss import DcamLoss, Reduction
from .torch_model import DcamModel

__all__ = ["Dcam"]


class Dcam(OpenVINOQuantizationMixin, AnomalibModule):
    """DCAM teacher-student anomaly detection model.

    The defaults are the paper's best configuration (channel DCAM, channel CD, spatial KD, SGD with lr 0.1,
    momentum 0.9, weight decay 1e-4) with STFPM's pixel term kept on, the KD term averaged over channels so that the
    terms stay balanced, and STFPM's product of the level maps. docs/method.md explains every option and the reasons
    for each default, and docs/results.md the measurements behind them.

    Args:
        backbone: timm backbone of teacher and student. Defaults to ``"resnet18"``.
        layers: Pyramid levels; ``None`` picks the stride 4/8/16 levels (``layer1..layer3`` for ResNets).
        pre_trained: Load ImageNet weights into the teacher when training starts (``setup("fit")``); a model
            restored from a checkpoint never needs them. Defaults to ``True``.
        backbone_weights: Local file with the teacher's timm state dict (offline use); loaded when training starts.
        attention: ``"channel"``, ``"spatial"``, ``"cbam"`` or ``"none"``. Defaults to ``"channel"``.
        attention_placement: ``"side"`` (loss only) or ``"inline"`` (feeds the next student stage).
            Defaults to ``"side"``.
        attention_reduction: Bottleneck ratio of the channel-attention MLP. Defaults to ``8``.
        mask_teacher: Also mask the teacher features with the student's attention mask in the loss.
            Defaults to ``False``.
        pixel_weight: Weight of STFPM's pixel cosine-distance term. Defaults to ``1.0``.
        channel_weight: Weight of the channel cosine-distance term. Defaults to ``1.0``.
        kd_weight: Weight of the spatial KL-distillation term. Defaults to ``1.0``.
        temperature: Softmax temperature of the KD term. Defaults to ``1.0``.
        kd_reduction: ``"mean"`` or ``"sum"`` of the KD term over channels. Defaults to ``"mean"``.
        batch_reduction: ``"sum"`` (STFPM's convention) or ``"mean"`` of every term over the batch.
            Defaults to ``"sum"``.
        anomaly_map_combine: ``"product"`` or ``"sum"`` of the per-level distance maps. Defaults to
            ``"product"``.
        anomaly_map_sigma: Gaussian smoothing of the anomaly map in pixels; ``0`` disables it. Defaults to ``0.0``.
        lr: SGD learning rate. Defaults to ``0.1``.
        momentum: SGD momentum. Defaults to ``0.9``.
        weight_decay: SGD weight decay. Defaults to ``1e-4``.
        pre_processor: Pre-processor, or ``True`` for anomalib's default (256 px, ImageNet normalisation).
        post_processor: Post-processor, or ``True`` for the default.
        evaluator: Evaluator, or ``True`` for the default.
        visualizer: Visualizer, or ``True`` for the default.

    Raises:
        ValueError: If an option has a value outside its accepted range; the message names the option.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        layers: Sequence[str] | None = None,
        pre_trained: bool = True,
        backbone_weights: str | Path | None = None,
        attention: AttentionType | str = AttentionType.CHANNEL,
        attention_placement: AttentionPlacement | str = AttentionPlacement.SIDE,
        attention_reduction: int = 8,
        mask_teacher: bool = False,
        pixel_weight: float = 1.0,
        channel_weight: float = 1.0,
        kd_weight: float = 1.0,
        temperature: float = 1.0,
        kd_reduction: Reduction | str = Reduction.MEAN,
        batch_reduction: Reduction | str = Reduction.SUM,
        anomaly_map_combine: CombineMode | str = CombineMode.PRODUCT,
        anomaly_map_sigma: float = 0.0,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        # Cheap checks first, so bad input fails before any backbone is built.
        self.lr = check_positive(lr, "lr")
        self.momentum = check_non_negative(momentum, "momentum")
        self.weight_decay = check_non_negative(weight_decay, "weight_decay")
        self.loss = DcamLoss(
            pixel_weight=pixel_weight,
            channel_weight=channel_weight,
            kd_weight=kd_weight,
            temperature=temperature,
            kd_reduction=kd_reduction,
            batch_reduction=batch_reduction,
        )
        # The teacher's ImageNet weights are loaded when training starts (see ``setup``), never for a model that is
        # restored from a checkpoint: testing, exporting and predicting work on an air-gapped machine.
        self.pre_trained = pre_trained
        self.backbone_weights = backbone_weights
        self._teacher_ready = not (pre_trained or backbone_weights is not None)
        self.model = DcamModel(
            backbone=backbone,
            layers=layers,
            pre_trained=False,
            attention=attention,
            attention_placement=attention_placement,
            attention_reduction=attention_reduction,
            mask_teacher=mask_teacher,
            anomaly_map_combine=anomaly_map_combine,
            anomaly_map_sigma=anomaly_map_sigma,
        )

    def setup(self, stage: str) -> None:
        """Load the teacher's ImageNet weights before training, unless a checkpoint already provided them.

        Args:
            stage: Lightning stage (``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``).
        """
        if stage == "fit" and not self._teacher_ready:
            self.model.load_teacher_weights(self.backbone_weights)
            self._teacher_ready = True

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint carries the trained teacher: no need to load ImageNet weights again."""
        super().on_load_checkpoint(checkpoint)
        self._teacher_ready = True

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Compute the DCAM loss on a batch of normal images and log every term.

        Args:
            batch: Input batch.
            args: Unused.
            kwargs: Unused.

        Returns:
            Dictionary with the loss.
        """
        del args, kwargs
        output = self.model(batch.image)
        losses = self.loss(output.teacher_features, output.student_features)
        batch_size = batch.image.shape[0]
        self.log("train_loss", losses.total, on_epoch=True, prog_bar=True, batch_size=batch_size)
        for name in ("pixel", "channel", "kd"):
            term = getattr(losses, name)
            if term is not None:
                self.log(f"train_{name}_loss", term, on_step=False, on_epoch=True, batch_size=batch_size)
        if output.masks:
            # A mean collapsing towards 0 means the attention is switching the student off.
            mask_mean = torch.stack([mask.mean() for mask in output.masks.values()]).mean()
            self.log(
                "train_attention_mask_mean",
                mask_mean.detach(),
                on_step=False,
                on_epoch=True,
                batch_size=batch_size,
            )
        return {"loss": losses.total}

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Score a validation batch.

        Args:
            batch: Input batch.
            args: Unused.
            kwargs: Unused.

        Returns:
            The batch updated with ``pred_score`` and ``anomaly_map``.
        """
        del args, kwargs
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """SGD over the student and the attention blocks (the teacher stays frozen)."""
        parameters = [*self.model.student_model.parameters(), *self.model.attention.parameters()]
        return torch.optim.SGD(parameters, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Trainer settings DCAM needs; epochs and everything else stay the user's choice."""
        return {"gradient_clip_val": 0, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """DCAM learns from normal images only."""
        return LearningType.ONE_CLASS

    @classmethod
    def checkpoint_safe_globals(cls) -> Sequence[Any]:
        """Enums saved in the hyper-parameters, allow-listed for ``weights_only`` checkpoint loading."""
        return (AttentionType, AttentionPlacement, CombineMode, Reduction)

    def to_torch(self, *args, **kwargs) -> Path:
        """Export to a ``.pt`` file holding teacher and student only (no attention blocks)."""
        with self.model.without_attention():
            return super().to_torch(*args, **kwargs)

    def to_onnx(self, *args, **kwargs) -> Path:
        """Export to ONNX (and, through it, to OpenVINO) with teacher and student only."""
        with self.model.without_attention():
            return super().to_onnx(*args, **kwargs)
