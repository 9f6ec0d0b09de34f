# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""DCAM: Attend, Distill, Detect (Jena et al., ICPR 2024, arXiv 2405.06467) as an anomalib model.

A frozen ImageNet teacher and a randomly initialised student of the same architecture are matched on a feature
pyramid, as in STFPM. During training, the student learns to give the teacher's features of the clean image also for
images with synthetic defects (denoising distillation), and, when switched on, DCAM attention blocks on the student's
pyramid levels re-weight what the loss compares, which can add a channel cosine distance and a spatial KL
distillation to STFPM's pixel cosine distance. At inference all of it is gone: the model is teacher + student, with
STFPM's latency.

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

import logging
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

from anomalib_dcam._validation import check_non_negative, check_positive, check_unit_interval, coerce_choice
from anomalib_dcam.deploy.quantization import OpenVINOQuantizationMixin
from anomalib_dcam.post_processing import CategoryPostProcessor
from anomalib_dcam.precision import native_cpu_bf16

from .anomaly_map import CombineMode
from .attention import AttentionPlacement, AttentionType
from .cached_teacher import cached_teacher_features, close_teacher_cache, start_teacher_cache
from .loss import DcamLoss, Reduction
from .synthetic_anomaly import DefectGenerator, SyntheticAnomalyStep, defect_seed, find_normalize
from .teacher_cache import (
    CacheDtype,
    CacheStorage,
    TeacherFeatureCache,
)
from .torch_model import DcamModel

__all__ = ["DCAM_PAPER_OPTIONS", "Dcam"]

logger = logging.getLogger(__name__)

# The paper's attention model on top of the defaults: channel DCAM blocks, channel CD and spatial KD at 1:1:1 with
# STFPM's pixel term, and the paper's weight decay. ``Dcam(**DCAM_PAPER_OPTIONS)``.
DCAM_PAPER_OPTIONS: dict[str, Any] = {
    "attention": AttentionType.CHANNEL.value,
    "channel_weight": 1.0,
    "kd_weight": 1.0,
    "weight_decay": 1e-4,
}


class Dcam(OpenVINOQuantizationMixin, AnomalibModule):
    """DCAM teacher-student anomaly detection model.

    The defaults are the configuration that detected best as one model for several products (docs/results.md, 5
    seeds): STFPM's student and pixel term, trained with denoising distillation on synthetic defects, STFPM's product
    of the level maps and SGD (lr 0.1, momentum 0.9, weight decay 1e-3), the image score read as the mean of the map's
    top 0.1 %. The paper's best configuration (channel DCAM, channel CD, spatial KD, weight decay 1e-4) is
    ``Dcam(**DCAM_PAPER_OPTIONS)``: ``attention="channel", channel_weight=1, kd_weight=1, weight_decay=1e-4``, with
    STFPM's pixel term kept on
    and the KD term averaged over channels so that the terms stay balanced. docs/method.md explains every option and
    the reasons for each default.

    Args:
        backbone: timm backbone of teacher and student. Defaults to ``"resnet18"``.
        layers: Pyramid levels; ``None`` picks the stride 4/8/16 levels (``layer1..layer3`` for ResNets).
        pre_trained: Load ImageNet weights into the teacher when training starts (``setup("fit")``); a model
            restored from a checkpoint never needs them. Defaults to ``True``.
        backbone_weights: Local file with the teacher's timm state dict (offline use); loaded when training starts.
        attention: ``"channel"``, ``"spatial"``, ``"cbam"`` or ``"none"``. Defaults to ``"none"`` (docs/results.md:
            over 5 seeds on one unified model the DCAM blocks and terms fell behind STFPM's student).
        attention_placement: ``"side"`` (loss only) or ``"inline"`` (feeds the next student stage).
            Defaults to ``"side"``.
        attention_reduction: Bottleneck ratio of the channel-attention MLP. Defaults to ``8``.
        mask_teacher: Also mask the teacher features with the student's attention mask in the loss.
            Defaults to ``False``.
        pixel_weight: Weight of STFPM's pixel cosine-distance term. Defaults to ``1.0``.
        channel_weight: Weight of the channel cosine-distance term (the paper uses ``1.0``). Defaults to ``0.0``.
        kd_weight: Weight of the spatial KL-distillation term (the paper uses ``1.0``). Defaults to ``0.0``.
        temperature: Softmax temperature of the KD term. Defaults to ``1.0``.
        kd_reduction: ``"mean"`` or ``"sum"`` of the KD term over channels. Defaults to ``"mean"``.
        batch_reduction: ``"sum"`` (STFPM's convention) or ``"mean"`` of every term over the batch.
            Defaults to ``"sum"``.
        hard_fraction: Hard-position distillation (AAND's HKD): the pixel term averages the hardest
            ``hard_fraction`` of each level's positions; ``1`` averages all of them (STFPM). Defaults to ``1.0``.
        global_weight: Weight of HKD's global cosine term (whole flattened maps). Defaults to ``0.0``.
        synthetic_anomaly_probability: Denoising distillation (DMDD, DeSTSeg): the chance that the student sees a
            training image with a synthetic defect (anomalib's Perlin defects, DRAEM's) while the loss targets
            stay the teacher's features of the clean image; ``0`` switches it off (training-only). Defaults to ``0.5``
            (docs/results.md: ahead of ``0`` on image AUROC and AUPRO over 3 seeds).
        synthetic_anomaly_blend: ``[low, high]`` range of the defects' opacity. Defaults to ``(0.2, 1.0)``, which
            includes faint defects.
        synthetic_anomaly_source: Folder of texture images to fill the defects from (as DRAEM's
            ``anomaly_source_path``); ``None`` fills them with Perlin noise. Defaults to ``None``.
        synthetic_anomaly_generator: What draws the defects: ``"bank"``, a bank of 128 defects drawn once with
            anomalib's own Perlin functions and reused per batch (random flips and transposes, opacities and which
            images get one, vectorised; with ``synthetic_anomaly_source``, 128 of its files as fills), or
            ``"anomalib"``, anomalib's ``PerlinAnomalyGenerator`` on every image (fresh defects, slower; the
            reference). Both keep exact resume. Training-only. Defaults to ``"bank"``.
        push_weight: Weight of the push-away term (DMDD): inside the defects, a hinge pushes the student's features
            away from the teacher's features of the corrupted image (one more teacher pass per step). Needs
            ``synthetic_anomaly_probability > 0``. Defaults to ``0.0``.
        push_margin: Margin of the push-away hinge on ``1 - cos``, in ``(0, 2]``. Defaults to ``0.5``.
        anomaly_map_combine: ``"product"`` or ``"sum"`` of the per-level distance maps. Defaults to
            ``"product"``.
        anomaly_map_sigma: Gaussian smoothing of the anomaly map in pixels; ``0`` disables it. Defaults to ``0.0``.
        image_score_top_fraction: How the image score is read from the map: ``0`` takes its maximum (STFPM), ``q``
            in ``(0, 1]`` the mean of its highest fraction ``q`` of pixels. Inference only. Defaults to ``0.001``
            (about one cell of the coarsest level, so small defects are not diluted).
        lr: SGD learning rate. Defaults to ``0.1``.
        momentum: SGD momentum. Defaults to ``0.9``.
        weight_decay: SGD weight decay (STFPM's; the paper uses ``1e-4``). Defaults to ``1e-3``.
        teacher_cache: Compute the frozen teacher's features once per training image and reuse them in later
            epochs: ``"off"``, ``"memory"`` (host RAM), ``"disk"`` (memory-mapped files) or ``"auto"``. ``"memory"``
            and ``"disk"`` are refused, with a logged warning, when a training transform is random; ``"auto"`` is
            ``"memory"`` when the transforms are deterministic and the training set's estimated pyramid fits
            ``teacher_cache_max_gb``, else off, and logs its choice and the reason at INFO level. Training-only.
            Defaults to ``"auto"``.
        teacher_cache_max_gb: Most gigabytes the cache may take; further images are recomputed. Defaults to ``4.0``.
        teacher_cache_dtype: ``"float16"`` or ``"float32"`` storage of cached features. Defaults to ``"float16"``.
        teacher_cache_dir: Folder of the ``"disk"`` cache; ``None`` for a temporary folder. Defaults to ``None``.
        channels_last: Train in the channels-last memory layout, which oneDNN's convolutions prefer (docs/
            training_speed.md); the plain layout is restored at the end of fit. Training-only. Defaults to ``True``.
        pre_processor: Pre-processor, or ``True`` for anomalib's default (256 px, ImageNet normalisation).
        post_processor: Post-processor, or ``True`` for the default: a :class:`CategoryPostProcessor`, which is
            anomalib's post-processor for one category and recognises the product and calibrates per category for a
            model trained on several (docs/multiclass.md).
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
        attention: AttentionType | str = AttentionType.NONE,
        attention_placement: AttentionPlacement | str = AttentionPlacement.SIDE,
        attention_reduction: int = 8,
        mask_teacher: bool = False,
        pixel_weight: float = 1.0,
        channel_weight: float = 0.0,
        kd_weight: float = 0.0,
        temperature: float = 1.0,
        kd_reduction: Reduction | str = Reduction.MEAN,
        batch_reduction: Reduction | str = Reduction.SUM,
        hard_fraction: float = 1.0,
        global_weight: float = 0.0,
        synthetic_anomaly_probability: float = 0.5,
        synthetic_anomaly_blend: Sequence[float] = (0.2, 1.0),
        synthetic_anomaly_source: str | Path | None = None,
        synthetic_anomaly_generator: DefectGenerator | str = DefectGenerator.BANK,
        push_weight: float = 0.0,
        push_margin: float = 0.5,
        anomaly_map_combine: CombineMode | str = CombineMode.PRODUCT,
        anomaly_map_sigma: float = 0.0,
        image_score_top_fraction: float = 0.001,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-3,
        teacher_cache: CacheStorage | str = CacheStorage.AUTO,
        teacher_cache_max_gb: float = 4.0,
        teacher_cache_dtype: CacheDtype | str = CacheDtype.FLOAT16,
        teacher_cache_dir: str | Path | None = None,
        channels_last: bool = True,
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
        self.teacher_cache: TeacherFeatureCache | None = None
        if coerce_choice(teacher_cache, CacheStorage, "teacher_cache") != CacheStorage.OFF:
            self.teacher_cache = TeacherFeatureCache(
                storage=teacher_cache,
                max_gb=teacher_cache_max_gb,
                dtype=teacher_cache_dtype,
                directory=teacher_cache_dir,
            )
        else:  # validated all the same, so that a typo fails now and not when the cache is switched on
            check_positive(teacher_cache_max_gb, "teacher_cache_max_gb")
            coerce_choice(teacher_cache_dtype, CacheDtype, "teacher_cache_dtype")
        if not isinstance(channels_last, bool):
            msg = f"channels_last={channels_last!r} is not accepted; it must be true or false."
            raise ValueError(msg)
        self.channels_last = channels_last
        self._epoch_cache_counts = (0, 0)
        self.loss = DcamLoss(
            pixel_weight=pixel_weight,
            channel_weight=channel_weight,
            kd_weight=kd_weight,
            temperature=temperature,
            kd_reduction=kd_reduction,
            batch_reduction=batch_reduction,
            hard_fraction=hard_fraction,
            global_weight=global_weight,
            push_weight=push_weight,
            push_margin=push_margin,
        )
        probability = check_unit_interval(synthetic_anomaly_probability, "synthetic_anomaly_probability")
        if self.loss.push_weight > 0 and probability == 0:
            msg = (
                f"push_weight={push_weight!r} needs synthetic defects to push away from; set "
                "synthetic_anomaly_probability > 0 or push_weight=0."
            )
            raise ValueError(msg)
        self.synthetic_anomalies: SyntheticAnomalyStep | None = None
        step = SyntheticAnomalyStep(
            probability,
            blend=synthetic_anomaly_blend,
            source=synthetic_anomaly_source,
            generator=synthetic_anomaly_generator,
        )
        if probability > 0:  # built either way above, so that a bad blend or source fails now
            self.synthetic_anomalies = step
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
            image_score_top_fraction=image_score_top_fraction,
        )
        if isinstance(self.post_processor, CategoryPostProcessor):
            self.post_processor.bind(self)

    @staticmethod
    def configure_post_processor() -> CategoryPostProcessor:
        """The default post-processor: per category when trained on several (see :class:`CategoryPostProcessor`)."""
        return CategoryPostProcessor()

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

    def on_fit_start(self) -> None:
        """Warn about emulated bfloat16, switch the memory layout and start the teacher-feature cache."""
        precision = str(self.trainer.precision)
        if precision.startswith("bf16") and self.device.type == "cpu" and not native_cpu_bf16():
            logger.warning(
                "precision=%r on a CPU without native bfloat16 (AVX512-BF16 or AMX) is emulated and usually slower "
                "than float32; use --trainer.precision 32-true on this machine (docs/training_speed.md).",
                precision,
            )
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.teacher_cache is not None:
            train_data = getattr(getattr(self.trainer, "datamodule", None), "train_data", None)
            transform = getattr(self.pre_processor, "transform", None)
            start_teacher_cache(self.teacher_cache, self.model.teacher_model, train_data, transform, self.device)

    def on_train_epoch_start(self) -> None:
        """Remember the cache counters, to log this epoch's hit rate."""
        if self.teacher_cache is not None:
            self._epoch_cache_counts = (self.teacher_cache.stats.hits, self.teacher_cache.stats.misses)

    def on_train_epoch_end(self) -> None:
        """Log the fraction of this epoch's images whose teacher features came from the cache."""
        cache = self.teacher_cache
        if cache is None or not cache.enabled:
            return
        hits = cache.stats.hits - self._epoch_cache_counts[0]
        looked_up = hits + cache.stats.misses - self._epoch_cache_counts[1]
        if looked_up:
            self.log("train_teacher_cache_hit_rate", hits / looked_up, on_epoch=True)

    def on_fit_end(self) -> None:
        """Free the cache and restore the default memory layout, so that export and inference see plain tensors."""
        if self.channels_last:
            self.model.to(memory_format=torch.contiguous_format)
        if self.teacher_cache is not None:
            close_teacher_cache(self.teacher_cache)

    def _cached_teacher_features(self, batch: Batch, images: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """The teacher's pyramid of ``images``, from the cache where stored; ``None`` when the cache is off."""
        if self.teacher_cache is None:
            return None
        features = cached_teacher_features(self.teacher_cache, self.model.teacher_model, batch.image_path, images)
        if features is not None and self.channels_last:
            # A channels-last teacher answers in channels-last, the cache in the plain layout: the loss would reduce
            # in another order on cache hits, and a resumed run (whose first epoch computes the features) would drift
            # from the uninterrupted one (which reads them). One layout keeps both exact.
            features = {level: value.contiguous(memory_format=torch.channels_last) for level, value in features.items()}
        return features

    def training_step(self, batch: Batch, batch_idx: int = 0, *args, **kwargs) -> STEP_OUTPUT:
        """Compute the DCAM loss on a batch of normal images and log every term.

        Args:
            batch: Input batch.
            batch_idx: Index of the batch in the epoch; with the epoch, it seeds the batch's synthetic defects.
            args: Unused.
            kwargs: Unused.

        Returns:
            Dictionary with the loss.
        """
        del args, kwargs
        images = batch.image
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        teacher_features = self._cached_teacher_features(batch, images)
        student_images, anomaly_masks, corrupted_teacher_features = images, None, None
        if self.synthetic_anomalies is not None:
            # Denoising distillation: the student sees the corrupted image, the targets stay the clean image's.
            # Seeded by the batch's place in the run, so a resumed run draws the uninterrupted run's defects.
            seed = defect_seed(torch.initial_seed(), self.current_epoch, batch_idx, self.global_rank)
            student_images, anomaly_masks = self.synthetic_anomalies(
                images, find_normalize(self.pre_processor.transform), seed=seed
            )
            if teacher_features is None:
                teacher_features = self.model.teacher_model(images)
            if self.loss.push_weight > 0:
                corrupted_teacher_features = self.model.teacher_model(student_images)
        output = self.model(student_images, teacher_features=teacher_features)
        losses = self.loss(output.teacher_features, output.student_features, corrupted_teacher_features, anomaly_masks)
        batch_size = batch.image.shape[0]
        self.log("train_loss", losses.total, on_epoch=True, prog_bar=True, batch_size=batch_size)
        for name, term in losses.terms().items():
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
        return (AttentionType, AttentionPlacement, CombineMode, Reduction, CacheStorage, CacheDtype, DefectGenerator)

    def to_torch(self, *args, **kwargs) -> Path:
        """Export to a ``.pt`` file holding teacher and student only (no attention blocks)."""
        with self.model.without_attention():
            return super().to_torch(*args, **kwargs)

    def to_onnx(self, *args, **kwargs) -> Path:
        """Export to ONNX (and, through it, to OpenVINO) with teacher and student only."""
        with self.model.without_attention():
            return super().to_onnx(*args, **kwargs)
