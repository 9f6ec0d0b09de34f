# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""One deployed model for every product: the model recognises the product, then applies that product's calibration.

A unified model scores every category on its own scale, so one threshold and one normalisation range (anomalib's
:class:`~anomalib.post_processing.PostProcessor`) misjudge most of them. :class:`CategoryPostProcessor` keeps, per
training category,

- a prototype of the frozen teacher's globally pooled features of its training normals (computed when fitting
  starts), which recognises the category of each image at inference (nearest prototype, cosine distance);
- a distance limit, set from the leave-one-out distances of that category's training normals so that a stated share
  of its normal images (``unknown_rejection_rate``, 1 %) falls beyond it; an image beyond its nearest prototype's
  limit is flagged as an unknown product (``pred_category = -1``) and reported anomalous;
- an image and a pixel threshold set from that category's held-out *normal* validation images at a stated
  false-alarm rate (:mod:`anomalib_dcam.post_processing.false_alarm`), or anomalib's F1-optimal threshold;
- a strictly increasing map of the raw scores to ``(0, 1)`` with the threshold at 0.5
  (:mod:`anomalib_dcam.post_processing.score_map`), so that the deployed scores rank as the raw ones and one cut works
  for every product.

Everything is a buffer or plain tensor ops, so recognition and per-category post-processing export to ONNX and
OpenVINO with the model. The features are read with a forward hook on the model's frozen feature extractor
(``model.teacher_model`` for Dcam and Stfpm), so the teacher runs once per image. With one category (unless
``recognize_single_category``) there is no recognition, and the outputs are anomalib's; with
``threshold="f1", normalization="min_max"`` they are exactly anomalib's post-processor's.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from enum import Enum
from types import SimpleNamespace
from typing import Any, NamedTuple

import torch
from anomalib.data import Batch, InferenceBatch
from anomalib.metrics import F1AdaptiveThreshold
from anomalib.models.components.base.dynamic_buffer import DynamicBufferMixin
from anomalib.post_processing import PostProcessor
from lightning import LightningModule, Trainer
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader

from anomalib_dcam._validation import check_positive, coerce_choice
from anomalib_dcam.categories import CATEGORY_OUTPUT, UNKNOWN_CATEGORY, category_name
from anomalib_dcam.post_processing.false_alarm import FalseAlarmThreshold, check_rate, false_alarm_threshold
from anomalib_dcam.post_processing.score_map import normal_scale, threshold_centred_map

logger = logging.getLogger(__name__)


UNKNOWN_SEPARATION_FRACTION = 0.25
"""Former unknown-product rule (``unknown_margin``): smallest limit, as a fraction of the distance to the nearest
other category's prototype."""

DEFAULT_FALSE_ALARM_RATE = 0.01
"""Default image false-alarm budget: 1 % of normal images flagged."""

DEFAULT_PIXEL_FALSE_ALARM_RATE = 0.001
"""Default pixel false-alarm budget: 0.1 % of the pixels of normal images inside the mask (docs/multiclass.md)."""

DEFAULT_UNKNOWN_REJECTION_RATE = 0.01
"""Default share of a known product's normal images flagged as an unknown product."""

FEATURE_MODULE_CANDIDATES = ("model.teacher_model", "model.teacher", "model.feature_extractor")
"""Attributes (relative to the Lightning module) searched for the frozen feature extractor, in order."""

_CALIBRATION_BUFFERS = (
    "category_image_threshold",
    "category_pixel_threshold",
    "category_image_min",
    "category_image_max",
    "category_pixel_min",
    "category_pixel_max",
    "category_image_scale",
    "category_pixel_scale",
)

_SCALE_BUFFERS = ("image_scale", "pixel_scale")

_METRIC_FIELDS = ("pred_score", "gt_label", "anomaly_map", "gt_mask")


class ThresholdMethod(str, Enum):
    """How :class:`CategoryPostProcessor` sets its thresholds (option ``threshold``)."""

    FALSE_ALARM_RATE = "false_alarm_rate"
    F1 = "f1"


class _NormalOnlyValidationWarning(logging.Filter):
    """Drops anomalib's F1-threshold warning about a validation set of normal images only.

    The false-alarm rule is made for such a set (held-out training normals): the warning would tell every user of the
    default to add defective images that the rule does not need.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record except that warning."""
        return "does not contain any anomalous images" not in record.getMessage()


_F1_THRESHOLD_LOGGER = logging.getLogger(F1AdaptiveThreshold.__module__)
_NORMAL_ONLY_VALIDATION_WARNING = _NormalOnlyValidationWarning()


@contextmanager
def _normal_only_validation_accepted() -> Iterator[None]:
    """Within the block, anomalib's F1 threshold does not warn about a validation set without defects."""
    _F1_THRESHOLD_LOGGER.addFilter(_NORMAL_ONLY_VALIDATION_WARNING)
    try:
        yield
    finally:
        _F1_THRESHOLD_LOGGER.removeFilter(_NORMAL_ONLY_VALIDATION_WARNING)


class Normalization(str, Enum):
    """How :class:`CategoryPostProcessor` maps raw scores to deployed ones (option ``normalization``)."""

    MONOTONE = "monotone"
    MIN_MAX = "min_max"


class CategoryInferenceBatch(InferenceBatch):
    """anomalib's :class:`~anomalib.data.InferenceBatch` that also carries the recognised category of each image.

    It *is* an ``InferenceBatch``: its tuple fields and ``_asdict()`` are anomalib's four, so everything that reads
    anomalib's predictions (``anomalib.deploy.TorchInferencer``, ``ImageBatch(**predictions._asdict())``) reads it
    unchanged. ``pred_category`` is an attribute: the index into the model's category names, or
    :data:`UNKNOWN_CATEGORY`.
    """

    pred_category: torch.Tensor | None = None

    def __new__(
        cls,
        pred_score: torch.Tensor | None = None,
        pred_label: torch.Tensor | None = None,
        anomaly_map: torch.Tensor | None = None,
        pred_mask: torch.Tensor | None = None,
        pred_category: torch.Tensor | None = None,
    ) -> CategoryInferenceBatch:
        """Build the batch; ``pred_category`` is kept as an attribute."""
        batch = super().__new__(cls, pred_score, pred_label, anomaly_map, pred_mask)
        batch.pred_category = pred_category
        return batch

    def _replace(self, **changes: Any) -> CategoryInferenceBatch:
        fields = {**self._asdict(), CATEGORY_OUTPUT: self.pred_category, **changes}
        return type(self)(**fields)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self._asdict().items())
        return f"{type(self).__name__}({fields}, pred_category={self.pred_category!r})"


class CategoryOutputs(NamedTuple):
    """The five graph outputs of a unified model during export: anomalib's four and ``pred_category``.

    :func:`anomalib_dcam.deploy.category_output.exporting_category` makes the post-processor return this instead of a
    :class:`CategoryInferenceBatch`, so that the exported graph names the category tensor; the export then keeps it
    inside the graph, off the outputs (see :mod:`anomalib_dcam.deploy.category_output`).
    """

    pred_score: torch.Tensor | None = None
    pred_label: torch.Tensor | None = None
    anomaly_map: torch.Tensor | None = None
    pred_mask: torch.Tensor | None = None
    pred_category: torch.Tensor | None = None


def pooled_features(features: torch.Tensor | Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor:
    """Describe each image by its globally average-pooled feature maps, one unit vector per image.

    Every level is pooled, L2-normalised and weighted equally, so that no level dominates by its width.

    Args:
        features: A feature map ``(B, C, H, W)``, or a dict or sequence of them (a feature pyramid).

    Returns:
        ``(B, D)`` float32 unit vectors.
    """
    levels = list(features.values()) if isinstance(features, Mapping) else features
    levels = [levels] if isinstance(levels, torch.Tensor) else list(levels)
    pooled = [functional.normalize(level.float().mean(dim=(-2, -1)), dim=1) for level in levels]
    return torch.cat(pooled, dim=1) / len(pooled) ** 0.5


def _per_image(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-image ``(B,)`` value shaped to broadcast against ``like`` (``(B, ...)``); a 0-d value as it is."""
    return value.reshape(-1, *([1] * (like.dim() - 1))) if value.dim() else value


def _format_rate(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.2f} %"


def describe_threshold(result: FalseAlarmThreshold) -> str:
    """One line on how a false-alarm threshold was set and what its true rate may be, for logs."""
    how = {
        "order_statistic": f"the k-th largest, k = {result.rank}, of {result.count}",
        "tail_fit": f"an exponential tail fit to {result.count}",
        "largest": f"the largest of {result.count}",
    }[result.rule]
    assumed = " if the tail is exponential" if result.rule == "tail_fit" else ""
    return (
        f"{result.threshold:.6g} ({how} normal values; budget {_format_rate(result.budget)}, expected "
        f"{_format_rate(result.expected_rate)}{assumed}, 95 % upper bound {_format_rate(result.upper_bound)})"
    )


class CategoryRecognizer(DynamicBufferMixin, nn.Module):
    """Nearest-prototype recognition of the product, with an unknown-product limit per category.

    Args:
        unknown_margin: Deprecated, the former rule: an image is unknown beyond ``unknown_margin`` times the largest
            distance among that category's training normals, and beyond :data:`UNKNOWN_SEPARATION_FRACTION` of the
            distance to the nearest other prototype. ``None`` (the default) uses ``rejection_rate``.
        rejection_rate: Share of a known category's normal images allowed beyond its limit. Each limit is set from
            the *leave-one-out* cosine distances of the category's training normals (each image's distance to the
            prototype of the others, a held-out distance) with the rule of
            :func:`~anomalib_dcam.post_processing.false_alarm.false_alarm_threshold`. Defaults to ``0.01``.

    Prototypes and limits hold for features at the precision they were fitted at. An INT8 export moves the teacher's
    features, by more than the limit of a product whose normals are all alike, so it fits the recogniser again on the
    quantized features with the same rule and rate (:mod:`anomalib_dcam.deploy.recognition_limits`).
    """

    def __init__(
        self,
        unknown_margin: float | None = None,
        rejection_rate: float = DEFAULT_UNKNOWN_REJECTION_RATE,
    ) -> None:
        super().__init__()
        self.unknown_margin = None if unknown_margin is None else check_positive(unknown_margin, "unknown_margin")
        self.rejection_rate = check_rate(rejection_rate, "unknown_rejection_rate")
        self.register_buffer("prototypes", torch.empty(0, 0))
        self.register_buffer("distance_limits", torch.empty(0))
        self.prototypes: torch.Tensor
        self.distance_limits: torch.Tensor

    @property
    def num_categories(self) -> int:
        """Number of categories with a prototype (0 before fitting)."""
        return int(self.prototypes.shape[0])

    def fit(self, features: torch.Tensor, categories: torch.Tensor, num_categories: int) -> list[dict[str, Any]]:
        """Compute each category's prototype and distance limit from its training normals.

        Args:
            features: ``(N, D)`` output of :func:`pooled_features`.
            categories: ``(N,)`` category index of each row.
            num_categories: Number of categories; each must have at least one row.

        Returns:
            One dict per category on how its limit was set (rule, counts, expected rejection rate).

        Raises:
            ValueError: If a category has no row.
        """
        counts = torch.bincount(categories, minlength=num_categories)
        if (counts == 0).any():
            missing = (counts == 0).nonzero().flatten().tolist()
            msg = (
                f"category recognition needs training images of every category; categories number {missing} have "
                "none (check the dataset's train/good folders, or bad_files='skip' leaving a category empty)."
            )
            raise ValueError(msg)
        sums = torch.zeros(num_categories, features.shape[1], dtype=features.dtype).index_add_(0, categories, features)
        prototypes = functional.normalize(sums, dim=1)
        if self.unknown_margin is not None:
            limits, reports = self._former_limits(features, categories, prototypes)
        else:
            limits, reports = self._calibrated_limits(features, categories, sums, counts)
        self.prototypes = prototypes.to(self.prototypes.device)
        self.distance_limits = limits.to(self.distance_limits.device)
        return reports

    def _calibrated_limits(
        self,
        features: torch.Tensor,
        categories: torch.Tensor,
        sums: torch.Tensor,
        counts: torch.Tensor,
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        # Leave-one-out: each training image against the prototype of the other images of its category, which it
        # did not shape, so its distance is distributed as a new normal image's (to a prototype of one image fewer).
        held_out = functional.normalize(sums[categories] - features, dim=1)
        distances = 1 - (features * held_out).sum(dim=1)
        limits, reports = [], []
        for index in range(len(counts)):
            if int(counts[index]) < 2:
                logger.warning(
                    "Category recognition: category number %d has one training image; it cannot be calibrated "
                    "and never flags an image as unknown.",
                    index,
                )
                limits.append(float("inf"))
                reports.append({"rule": "too_few_images", "count": int(counts[index])})
                continue
            result = false_alarm_threshold(distances[categories == index], self.rejection_rate)
            limits.append(result.threshold)
            reports.append(result.as_dict())
        return torch.tensor(limits, dtype=features.dtype), reports

    def _former_limits(
        self,
        features: torch.Tensor,
        categories: torch.Tensor,
        prototypes: torch.Tensor,
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        num_categories = prototypes.shape[0]
        distances = 1 - (features * prototypes[categories]).sum(dim=1)
        largest = torch.zeros(num_categories, dtype=features.dtype).scatter_reduce_(
            0, categories, distances, reduce="amax"
        )
        # A floor keeps a category whose normals are all alike from flagging each of its defective images.
        separation = 1 - prototypes @ prototypes.T
        separation.fill_diagonal_(float("inf"))
        nearest_other = separation.amin(dim=1)
        floor = UNKNOWN_SEPARATION_FRACTION * torch.where(nearest_other.isinf(), 0, nearest_other)
        limits = torch.maximum(self.unknown_margin * largest, floor)
        return limits, [{"rule": "unknown_margin", "unknown_margin": self.unknown_margin}] * num_categories

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Recognise the category of each image.

        Args:
            features: ``(B, D)`` output of :func:`pooled_features`.

        Returns:
            ``(category, nearest)``: the recognised category index, :data:`UNKNOWN_CATEGORY` beyond the limit, and the
            nearest category's index whatever the limit (both ``(B,)`` int64).
        """
        distances = 1 - features @ self.prototypes.T
        nearest = distances.argmin(dim=1)
        distance = distances.gather(1, nearest[:, None])[:, 0]
        unknown = distance > self.distance_limits[nearest]
        return torch.where(unknown, torch.full_like(nearest, UNKNOWN_CATEGORY), nearest), nearest


class CategoryPostProcessor(DynamicBufferMixin, PostProcessor):
    """anomalib's post-processor with false-alarm-rate thresholds, order-keeping scores and per-category calibration.

    Pass it as ``post_processor=CategoryPostProcessor()`` to any anomalib image model with a frozen feature extractor
    (Dcam uses it by default) and train on :class:`~anomalib_dcam.data.MultiClassMVTec`. The category names come
    from ``datamodule.categories`` and travel with the checkpoint; each validation image's category comes from its
    path (``samples.category``).

    **Thresholds** (``threshold="false_alarm_rate"``, the default): each category's image threshold is set from its
    held-out normal validation images only (``gt_label == 0``; synthetic anomalies are ignored) so that the expected
    share of normal images above it is at most ``false_alarm_rate``: the ``k``-th largest normal score with
    ``k = floor(false_alarm_rate * (n + 1))``, whose true rate is ``Beta(k, n + 1 - k)``-distributed (mean
    ``k / (n + 1)``), or, when ``n < 1 / false_alarm_rate - 1`` normals cannot resolve the budget (fewer than 99 for
    1 %), an exponential tail fitted to the largest fifth of them and extrapolated (never below the largest normal;
    distribution-free, such a threshold's rate is at most ``1 - 0.05 ** (1 / n)`` with 95 % confidence, 7.2 % for
    40 normals). The pixel threshold is set the same way from the pixels of the normal images at
    ``pixel_false_alarm_rate``. Details and a table of the uncertainty:
    :mod:`~anomalib_dcam.post_processing.false_alarm` and docs/multiclass.md. ``threshold="f1"`` uses anomalib's
    F1-optimal threshold over normals and anomalies, for validation sets with real anomalies.

    **Scores** (``normalization="monotone"``, the default): ``0.5 + 0.5 z / (1 + |z|)`` with
    ``z = (raw - threshold) / scale``, where ``scale`` is the distance from the median normal score to the threshold:
    strictly increasing (no clipping, so the deployed scores of a category rank exactly as its raw scores), the
    threshold at 0.5, the typical normal image at 0.25, in every category. The same for anomaly maps.
    ``normalization="min_max"`` is anomalib's clipped min-max formula.

    **Unknown products**: an image farther from its nearest prototype than that category's limit is flagged
    (``pred_category = -1``, ``pred_label = True``); the limits let ``unknown_rejection_rate`` of the known categories'
    normal images through as unknown (see :class:`CategoryRecognizer`). A normal image is rejected when it is above the
    threshold or unknown, so its total false-alarm rate is at most ``false_alarm_rate + unknown_rejection_rate``.

    Args:
        unknown_margin: Deprecated: the former unknown-product rule (see :class:`CategoryRecognizer`). ``None`` (the
            default) sets the limits at ``unknown_rejection_rate``.
        feature_module: Dotted path, relative to the Lightning module, of the frozen feature extractor whose output
            describes the product; ``None`` tries ``model.teacher_model``, ``model.teacher`` and
            ``model.feature_extractor``.
        category_calibration: ``False`` applies one calibration, computed over all categories' validation images, to
            every category (the category is still recognised and returned). A deploy-time switch, not saved in
            checkpoints. Defaults to ``True``.
        recognize_single_category: Also recognise the product for a model trained on one category, so that other
            products are flagged unknown. ``False`` (the default): a one-category model has no recognition, because
            the anomaly score itself rejects a foreign product in most cases and recognition would add up to
            ``unknown_rejection_rate`` to the false alarms on good parts.
        known_category: Name of the product every image shows, when the line knows it: its calibration is applied
            without recognition (nothing is flagged unknown). Not saved in checkpoints; ``None`` (the default)
            recognises each image.
        normal_quantile: Deprecated: the image threshold is this quantile of the held-out normal scores (linear
            interpolation). Use ``false_alarm_rate``, whose rule states the rate it achieves with few normals.
        threshold: ``"false_alarm_rate"`` (the default) or ``"f1"``, see above. Set when validating.
        false_alarm_rate: Image false-alarm budget in ``(0, 1)``. Defaults to ``0.01``.
        pixel_false_alarm_rate: Pixel false-alarm budget in ``(0, 1)``: the expected share of the pixels of normal
            images inside the predicted mask. Defaults to ``0.001`` (docs/multiclass.md says why).
        normalization: ``"monotone"`` (the default) or ``"min_max"``, see above.
        unknown_rejection_rate: Share of a known category's normal images flagged unknown, in ``(0, 1)``. Set when the
            prototypes are fitted (start of training). Defaults to ``0.01``.
        **kwargs: Options of :class:`~anomalib.post_processing.PostProcessor` (sensitivities and switches).

    Raises:
        ValueError: If an option is out of range or not one of its accepted values; the message names the option.

    Example:
        >>> from anomalib.models import Stfpm
        >>> model = Stfpm(post_processor=CategoryPostProcessor())  # doctest: +SKIP
    """

    def __init__(
        self,
        unknown_margin: float | None = None,
        feature_module: str | None = None,
        category_calibration: bool = True,
        recognize_single_category: bool = False,
        known_category: str | None = None,
        normal_quantile: float | None = None,
        threshold: ThresholdMethod | str = ThresholdMethod.FALSE_ALARM_RATE,
        false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
        pixel_false_alarm_rate: float = DEFAULT_PIXEL_FALSE_ALARM_RATE,
        normalization: Normalization | str = Normalization.MONOTONE,
        unknown_rejection_rate: float = DEFAULT_UNKNOWN_REJECTION_RATE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if unknown_margin is not None:
            warnings.warn(
                "CategoryPostProcessor(unknown_margin=...) is deprecated and applies the former unknown-product rule; "
                "use unknown_rejection_rate (the share of a known product's normal images flagged unknown).",
                FutureWarning,
                stacklevel=2,
            )
        self.recognizer = CategoryRecognizer(unknown_margin, unknown_rejection_rate)
        self.feature_module = feature_module
        self.category_calibration = bool(category_calibration)
        self.recognize_single_category = bool(recognize_single_category)
        self.known_category = known_category
        if normal_quantile is not None:
            is_number = not isinstance(normal_quantile, bool) and isinstance(normal_quantile, int | float)
            if not is_number or not 0 < normal_quantile <= 1:
                msg = (
                    f"normal_quantile={normal_quantile!r} is not accepted; use a number in (0, 1], e.g. 0.99, or None."
                )
                raise ValueError(msg)
            rate = f"false_alarm_rate={1 - normal_quantile:.4g}" if normal_quantile < 1 else "a small false_alarm_rate"
            warnings.warn(
                "CategoryPostProcessor(normal_quantile=...) is deprecated; use threshold='false_alarm_rate' with "
                f"{rate}, whose rule states the false-alarm rate it achieves with few normals.",
                FutureWarning,
                stacklevel=2,
            )
        self.normal_quantile = normal_quantile
        self.threshold = coerce_choice(threshold, ThresholdMethod, "threshold").value
        self.false_alarm_rate = check_rate(false_alarm_rate, "false_alarm_rate")
        self.pixel_false_alarm_rate = check_rate(pixel_false_alarm_rate, "pixel_false_alarm_rate")
        self.normalization = coerce_choice(normalization, Normalization, "normalization").value
        self.category_names: list[str] = []
        self.calibration_report: dict[str, Any] = {}
        self.export_category = False
        for name in _CALIBRATION_BUFFERS:
            self.register_buffer(name, torch.empty(0))
        for name in _SCALE_BUFFERS:
            self.register_buffer(name, torch.tensor(float("nan")))
        self.image_scale: torch.Tensor
        self.pixel_scale: torch.Tensor
        self._features: torch.Tensor | None = None
        self._val_categories: dict[str, int] = {}
        self._outputs: dict[str, tuple[int | None, dict[str, torch.Tensor | None]]] = {}

    # -- configuration persisted in checkpoints ---------------------------------------------------------------------

    @property
    def unknown_rejection_rate(self) -> float:
        """Share of a known category's normal images flagged unknown (see :class:`CategoryRecognizer`)."""
        return self.recognizer.rejection_rate

    @property
    def _checkpoint_config_keys(self) -> tuple[str, ...]:
        return (
            *super()._checkpoint_config_keys,
            "feature_module",
            "recognize_single_category",
            "normal_quantile",
            "threshold",
            "false_alarm_rate",
            "pixel_false_alarm_rate",
            "normalization",
            "category_names",
            "calibration_report",
        )

    def checkpoint_config(self) -> dict[str, Any]:
        """Plain-data configuration: category names, options, the unknown-product rule and the calibration report."""
        return {
            **super().checkpoint_config(),
            "unknown_margin": self.recognizer.unknown_margin,
            "unknown_rejection_rate": self.recognizer.rejection_rate,
        }

    def load_checkpoint_config(self, config: dict[str, Any]) -> None:
        """Restore :meth:`checkpoint_config`."""
        super().load_checkpoint_config(config)
        if "unknown_rejection_rate" in config:
            # Checkpoints written before the rate existed saved unknown_margin=2.0 by default: their limits are
            # buffers already, and a new fit uses the rate.
            self.recognizer.rejection_rate = float(config["unknown_rejection_rate"])
            margin = config.get("unknown_margin")
            self.recognizer.unknown_margin = None if margin is None else float(margin)
        self.category_names = [str(name) for name in self.category_names or []]
        self.calibration_report = dict(self.calibration_report or {})

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        if f"{prefix}_image_threshold" in state_dict and f"{prefix}image_scale" not in state_dict:
            # Written before order-keeping scores existed: keep that model's former normalisation until it is
            # validated again (its scales were never computed).
            logger.info("A post-processor from a former version: normalization='min_max' until validated again.")
            self.normalization = Normalization.MIN_MAX.value
        # Checkpoints written with anomalib's own PostProcessor lack the category buffers: keep them empty.
        defaults = {name: getattr(self, name) for name in (*_CALIBRATION_BUFFERS, *_SCALE_BUFFERS)}
        defaults["recognizer.prototypes"] = self.recognizer.prototypes
        defaults["recognizer.distance_limits"] = self.recognizer.distance_limits
        for name, value in defaults.items():
            state_dict.setdefault(prefix + name, value)
        super()._load_from_state_dict(state_dict, prefix, *args)

    @property
    def is_multi_category(self) -> bool:
        """Whether recognition and per-category calibration are in use (see ``recognize_single_category``)."""
        return self.recognizer.num_categories >= (1 if self.recognize_single_category else 2)

    def _known_category_index(self) -> int:
        if self.known_category not in self.category_names:
            msg = (
                f"known_category={self.known_category!r} is not a category of this model; "
                f"use one of {', '.join(self.category_names)} or None to recognise each image."
            )
            raise ValueError(msg)
        return self.category_names.index(self.known_category)

    def category_name(self, index: int) -> str:
        """Name of a ``pred_category`` value (see :func:`anomalib_dcam.deploy.categories.category_name`)."""
        return category_name(index, self.category_names)

    # -- the feature hook ------------------------------------------------------------------------------------------

    def bind(self, model: nn.Module) -> None:
        """Read the product's features from ``model``'s frozen feature extractor on every forward pass.

        Called by Dcam itself and, for any model, when a trainer sets up; call it after loading a model by hand
        (e.g. ``Stfpm.load_from_checkpoint(..., post_processor=CategoryPostProcessor())``) before exporting it.

        Raises:
            ValueError: If ``feature_module`` does not name a module of ``model`` or no candidate exists.
        """
        module = self.find_feature_module(model)
        # A check rather than a stored handle: handles do not survive pickling (to_torch) or deep copies.
        if not any(getattr(hook, "__self__", None) is self for hook in module._forward_hooks.values()):
            module.register_forward_hook(self._keep_features)

    def find_feature_module(self, model: nn.Module) -> nn.Module:
        """The feature extractor that describes the product (see ``feature_module``)."""
        candidates = (self.feature_module,) if self.feature_module else FEATURE_MODULE_CANDIDATES
        for path in candidates:
            module: Any = model
            for part in path.split("."):
                module = getattr(module, part, None)
            if isinstance(module, nn.Module):
                return module
        msg = (
            f"feature_module={self.feature_module!r}: {type(model).__name__} has no module "
            f"{' or '.join(candidates)}; pass the dotted path of its frozen feature extractor "
            "(e.g. CategoryPostProcessor(feature_module='model.teacher_model'))."
        )
        raise ValueError(msg)

    def _keep_features(self, module: nn.Module, inputs: Any, output: Any) -> None:
        del module, inputs
        if self.is_multi_category:  # a model without recognition never computes them
            self._features = pooled_features(output)

    def _take_features(self) -> torch.Tensor:
        features, self._features = self._features, None
        if features is None:
            msg = (
                "CategoryPostProcessor saw no features of this batch: the model was not bound to it; call "
                "model.post_processor.bind(model) after loading the model."
            )
            raise RuntimeError(msg)
        return features

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Bind to the model whenever a trainer runs it."""
        del trainer, stage
        self.bind(pl_module)

    # -- fitting: prototypes and unknown-product limits ---------------------------------------------------------------

    def _datamodule_categories(self, datamodule: object) -> list[str]:
        """The datamodule's categories; one named after ``datamodule.category`` for a one-category datamodule."""
        names = [str(name) for name in getattr(datamodule, "categories", None) or []]
        if not names and self.recognize_single_category:
            names = [str(getattr(datamodule, "category", None) or "product")]
        return names

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute the category prototypes and limits from the frozen teacher's features of the training normals."""
        datamodule = getattr(trainer, "datamodule", None)
        names = self._datamodule_categories(datamodule)
        train_data = getattr(datamodule, "train_data", None)
        if len(names) < (1 if self.recognize_single_category else 2) or train_data is None:
            return  # one category: no recognition
        from anomalib_dcam.data.multiclass import categories_by_image_path

        category_of = categories_by_image_path(train_data) if len(names) > 1 else {}
        index_of = {name: index for index, name in enumerate(names)}
        loader = DataLoader(
            train_data,
            batch_size=getattr(datamodule, "eval_batch_size", 32),
            shuffle=False,
            num_workers=0,
            collate_fn=train_data.collate_fn,
        )
        features, categories = [], []
        module = self.find_feature_module(pl_module)
        transform = getattr(pl_module.pre_processor, "transform", None) if pl_module.pre_processor else None
        logger.info(
            "Category recognition: describing %d training images of %d categories.",
            len(train_data),
            len(names),
        )
        with torch.no_grad():
            for batch in loader:
                images = batch.image.to(pl_module.device)
                images = transform(images) if transform else images
                features.append(pooled_features(module(images)).cpu())
                if len(names) == 1:
                    categories.extend([0] * len(images))
                    continue
                unknown = [str(path) for path in batch.image_path if category_of.get(str(path)) not in index_of]
                if unknown:
                    msg = (
                        f"CategoryPostProcessor: training image {unknown[0]} has no category among "
                        f"datamodule.categories={names}; train on a datamodule whose samples have a 'category' "
                        "column (anomalib_dcam.data.MultiClassMVTec)."
                    )
                    raise ValueError(msg)
                categories.extend(index_of[category_of[str(path)]] for path in batch.image_path)
        self._features = None
        reports = self.recognizer.fit(torch.cat(features), torch.tensor(categories), len(names))
        self.category_names = names
        self.calibration_report = {**self.calibration_report, "unknown_limits": dict(zip(names, reports, strict=True))}
        self.to(pl_module.device)
        for name, limit, report in zip(names, self.recognizer.distance_limits.tolist(), reports, strict=True):
            if "expected_rate" in report:
                logger.info(
                    "Category recognition: %s is unknown beyond cosine distance %s.",
                    name,
                    describe_threshold(FalseAlarmThreshold(**report)),
                )
            else:
                logger.info("Category recognition: %s is unknown beyond cosine distance %.4f.", name, limit)

    # -- validation: thresholds, scales and ranges ----------------------------------------------------------------

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start collecting each validation image's outputs under its own category."""
        del pl_module
        self._outputs = {}
        self._val_categories = {}
        if not self.is_multi_category or len(self.category_names) < 2:
            return
        from anomalib_dcam.data.multiclass import categories_by_image_path

        index_of = {name: index for index, name in enumerate(self.category_names)}
        val_data = getattr(getattr(trainer, "datamodule", None), "val_data", None)
        self._val_categories = {
            path: index_of[category]
            for path, category in (categories_by_image_path(val_data) if val_data is not None else {}).items()
            if category in index_of
        }

    def _validation_category(self, path: str) -> int | None:
        """Category index of a validation image: from its path, or the only category of a one-category model."""
        if not self.is_multi_category:
            return None
        if len(self.category_names) == 1:
            return 0
        return self._val_categories.get(path)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Batch,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        """Update anomalib's overall statistics and keep each image's outputs (and category), on the CPU."""
        super().on_validation_batch_end(trainer, pl_module, outputs, *args, **kwargs)
        features, self._features = self._features, None
        recognised = None
        if self.is_multi_category and features is not None and features.shape[0] == len(outputs.image):
            with torch.no_grad():
                recognised = self.recognizer(features.to(self.recognizer.prototypes.device))[0].cpu()
        paths = getattr(outputs, "image_path", None) or [None] * len(outputs.image)
        for row, path in enumerate(paths):
            key = str(path) if path is not None else f"#{len(self._outputs)}"
            values = {field: getattr(outputs, field, None) for field in _METRIC_FIELDS}
            values = {
                field: None if value is None else value[row].detach().cpu().clone() for field, value in values.items()
            }
            values["recognised"] = None if recognised is None else recognised[row]
            self._outputs[key] = (self._validation_category(key), values)

    def _gathered_outputs(self, trainer: Trainer) -> dict[str, tuple[int | None, dict[str, torch.Tensor | None]]]:
        """Every process's validation outputs, each image once (keyed by path: a distributed sampler repeats some)."""
        world_size = getattr(trainer, "world_size", 1)
        if world_size <= 1:
            return self._outputs
        gathered: list[dict] = [{} for _ in range(world_size)]
        torch.distributed.all_gather_object(gathered, self._outputs)
        return {path: value for outputs in gathered for path, value in outputs.items()}

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute the overall calibration from every validation image, then each category's from its own."""
        false_alarm_rule = self.threshold == ThresholdMethod.FALSE_ALARM_RATE.value
        with _normal_only_validation_accepted() if false_alarm_rule else nullcontext():
            super().on_validation_epoch_end(trainer, pl_module)  # anomalib's overall F1 thresholds and min-max ranges
        outputs = self._gathered_outputs(trainer)
        self._outputs = {}
        if not outputs:
            return
        anomalib_values = {
            "image_threshold": self._image_threshold,
            "pixel_threshold": self._pixel_threshold,
            "image_min": self.image_min,
            "image_max": self.image_max,
            "pixel_min": self.pixel_min,
            "pixel_max": self.pixel_max,
        }
        overall, overall_report = self._calibrate([row for _, row in outputs.values()], anomalib_values)
        for name in ("image_threshold", "pixel_threshold"):
            if name in overall:
                getattr(self, f"_{name}").fill_(overall[name])
        for name in _SCALE_BUFFERS:
            getattr(self, name).fill_(overall.get(name, float("nan")))
        report: dict[str, Any] = {"overall": overall_report}
        if self.is_multi_category:
            fallback = {name: float(getattr(self, name)) for name in _SCALE_BUFFERS}
            fallback.update({name: float(value) for name, value in anomalib_values.items()})
            fallback.update(overall)
            values: dict[str, list[float]] = {name: [] for name in _CALIBRATION_BUFFERS}
            per_category = {}
            for index, name in enumerate(self.category_names):
                rows = [row for category, row in outputs.values() if category == index]
                computed, per_category[name] = self._calibrate(rows)
                if not rows:
                    logger.warning("Category %s has no validation image: it uses the overall calibration.", name)
                for buffer in _CALIBRATION_BUFFERS:
                    key = buffer.removeprefix("category_")
                    values[buffer].append(float(computed.get(key, fallback[key])))
            device = self._image_threshold.device
            for buffer, column in values.items():
                setattr(self, buffer, torch.tensor(column, device=device))
            report["categories"] = per_category
        if "unknown_limits" in self.calibration_report:
            report["unknown_limits"] = self.calibration_report["unknown_limits"]
        self.calibration_report = report
        groups = report.get("categories", {"all validation images": overall_report})
        for name, group in groups.items():
            for level in ("image", "pixel"):
                if "expected_rate" in group.get(level, {}):
                    threshold = describe_threshold(FalseAlarmThreshold(**group[level]))
                    logger.info("Calibration of %s: %s threshold %s.", name, level, threshold)

    def _calibrate(
        self,
        rows: list[dict[str, torch.Tensor | None]],
        anomalib_values: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """Thresholds, scales and ranges of a group of validation outputs (empty without any).

        Args:
            rows: Per-image outputs (``pred_score``, ``gt_label``, ``anomaly_map``, ``gt_mask``, ``recognised``).
            anomalib_values: anomalib's own values over the same rows (its synchronised metrics), used for the F1
                thresholds and the ranges instead of recomputing them.

        Returns:
            The values by name (``image_threshold``, ``pixel_threshold``, ``image_min``, ..., ``image_scale``,
            ``pixel_scale``) and a plain-data report of how the thresholds were set.
        """
        if not rows:
            return {}, {"images": 0}
        stacked = SimpleNamespace(
            **{
                field: None if any(row[field] is None for row in rows) else torch.stack([row[field] for row in rows])
                for field in _METRIC_FIELDS
            },
        )
        if stacked.pred_score is None and stacked.anomaly_map is not None:
            stacked.pred_score = stacked.anomaly_map.flatten(1).amax(dim=1)
        normal = (
            torch.ones(len(rows), dtype=torch.bool) if stacked.gt_label is None else stacked.gt_label.flatten() == 0
        )
        report: dict[str, Any] = {"images": len(rows), "normal_images": int(normal.sum()), "threshold": self.threshold}
        values: dict[str, float] = {}
        levels = (
            ("image", stacked.pred_score, self.false_alarm_rate, ["pred_score", "gt_label"]),
            ("pixel", stacked.anomaly_map, self.pixel_false_alarm_rate, ["anomaly_map", "gt_mask"]),
        )
        for level, raw, rate, fields in levels:
            if raw is None:
                continue
            raw = raw.float()
            normals = raw[normal] if raw.shape[0] == len(rows) else raw[:0]
            values[f"{level}_min"], values[f"{level}_max"] = float(raw.min()), float(raw.max())
            threshold: float | None = None
            if self.threshold == ThresholdMethod.FALSE_ALARM_RATE.value:
                result = false_alarm_threshold(normals, rate)
                if result is not None:
                    threshold = result.threshold
                    report[level] = result.as_dict()
                else:
                    logger.warning("No normal validation image: the %s threshold falls back to anomalib's F1.", level)
            if level == "image" and self.normal_quantile is not None and normals.numel():
                # Deprecated option: a quantile of the normal scores, kept as it was.
                threshold = float(torch.quantile(normals.flatten(), self.normal_quantile))
                report[level] = {"rule": "normal_quantile", "normal_quantile": self.normal_quantile}
            if threshold is None:
                threshold = self._f1_threshold(stacked, fields, anomalib_values, level)
                report.setdefault(level, {"rule": "f1"})
            if threshold is not None:
                values[f"{level}_threshold"] = threshold
                median = float(normals.flatten().median()) if normals.numel() else None
                width = values[f"{level}_max"] - values[f"{level}_min"]
                values[f"{level}_scale"] = normal_scale(threshold, median, width)
        recognised = [row.get("recognised") for row, is_normal in zip(rows, normal.tolist(), strict=True) if is_normal]
        if recognised and all(value is not None for value in recognised):
            report["normal_images_flagged_unknown"] = sum(int(value) == UNKNOWN_CATEGORY for value in recognised)
        return values, report

    @staticmethod
    def _f1_threshold(
        stacked: SimpleNamespace,
        fields: list[str],
        anomalib_values: Mapping[str, torch.Tensor] | None,
        level: str,
    ) -> float | None:
        """The F1-adaptive threshold of anomalib over the rows (from ``anomalib_values`` when given)."""
        if anomalib_values is not None:
            value = float(anomalib_values[f"{level}_threshold"])
            return None if math.isnan(value) else value
        if any(getattr(stacked, field) is None for field in fields):
            return None
        # Every process holds all the rows already: no synchronisation (the processes could disagree on which
        # categories they saw, and a collective call would then wait forever).
        metric = F1AdaptiveThreshold(fields=fields, strict=False, sync_on_compute=False)
        metric.update(stacked)
        return float(metric.compute()) if metric.update_called else None

    # -- applying it ----------------------------------------------------------------------------------------------

    def _overall_calibration(self) -> dict[str, torch.Tensor]:
        return {
            "image_threshold": self.image_threshold,
            "pixel_threshold": self.pixel_threshold,
            "image_min": self.image_min,
            "image_max": self.image_max,
            "pixel_min": self.pixel_min,
            "pixel_max": self.pixel_max,
            "image_scale": self.image_scale,
            "pixel_scale": self.pixel_scale,
        }

    def _calibration(self, nearest: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Thresholds, scales and ranges per image of the recognised (nearest) category, else the overall ones.

        Without recognition (``nearest`` is ``None``) the overall values are returned as they are (0-dimensional).
        """
        overall = self._overall_calibration()
        if nearest is None:
            calibration = overall
        elif (
            not self.category_calibration
            or self.category_image_threshold.numel() != self.recognizer.num_categories
            or self.category_image_scale.numel() != self.recognizer.num_categories
        ):
            calibration = {name: value.expand(nearest.shape) for name, value in overall.items()}
        else:
            calibration = {}
            for name, value in overall.items():
                per_category = getattr(self, f"category_{name}")[nearest]
                calibration[name] = torch.where(torch.isnan(per_category), value, per_category)
        for level in ("image", "pixel"):
            # Models validated before scales existed: half of anomalib's min-max width.
            scale, low, high = (calibration[f"{level}_{name}"] for name in ("scale", "min", "max"))
            calibration[f"{level}_scale"] = torch.where(torch.isnan(scale), (high - low) / 2, scale)
        return calibration

    def _map(self, values: torch.Tensor, calibration: dict[str, torch.Tensor], level: str) -> torch.Tensor:
        """Deployed values of one level (``"image"`` or ``"pixel"``) with the chosen normalisation."""
        threshold = _per_image(calibration[f"{level}_threshold"], values)
        if self.normalization == Normalization.MIN_MAX.value:
            low, high = (_per_image(calibration[f"{level}_{name}"], values) for name in ("min", "max"))
            return self._normalize(values, low, high, threshold)
        return threshold_centred_map(values, threshold, _per_image(calibration[f"{level}_scale"], values))

    def _post_process(
        self,
        pred_score: torch.Tensor | None,
        anomaly_map: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Recognise, normalise and threshold one batch; returns score, map, label, mask and category (or ``None``)."""
        category = nearest = None
        if self.is_multi_category:
            category, nearest = self.recognizer(self._take_features().to(self.recognizer.prototypes.device))
            if self.known_category is not None:
                category = nearest = torch.full_like(nearest, self._known_category_index())
        else:
            self._features = None
        if pred_score is None:
            pred_score = torch.amax(anomaly_map, dim=(-2, -1)).reshape(-1)
        calibration = self._calibration(nearest)
        raw_score, raw_map = pred_score, anomaly_map
        if self.enable_normalization:
            pred_score = self._map(pred_score, calibration, "image")
            if anomaly_map is not None:
                anomaly_map = self._map(anomaly_map, calibration, "pixel")
        pred_label = pred_mask = None
        if self.enable_thresholding:
            if self.enable_normalization:
                pred_label = pred_score > self.normalized_image_threshold
                if anomaly_map is not None:
                    pred_mask = anomaly_map > self.normalized_pixel_threshold
            else:  # raw outputs: compare with the raw thresholds
                pred_label = raw_score > _per_image(calibration["image_threshold"], raw_score)
                if raw_map is not None:
                    pred_mask = raw_map > _per_image(calibration["pixel_threshold"], raw_map)
            if category is not None:
                # Computed from the category itself, which also keeps the category tensor inside exported graphs.
                pred_label = pred_label | _per_image(category == UNKNOWN_CATEGORY, pred_label)
        return pred_score, anomaly_map, pred_label, pred_mask, category

    def _uses_anomalib_path(self) -> bool:
        """A model without recognition and with min-max scores is exactly anomalib's post-processor."""
        return not self.is_multi_category and self.normalization == Normalization.MIN_MAX.value

    def forward(self, predictions: InferenceBatch) -> InferenceBatch:
        """Post-process the model's predictions, with the recognised category's calibration.

        Returns:
            anomalib's :class:`~anomalib.data.InferenceBatch` for a model without recognition, else a
            :class:`CategoryInferenceBatch` (an ``InferenceBatch`` with ``pred_category``); while exporting with
            :func:`~anomalib_dcam.deploy.category_output.exporting_category`, :class:`CategoryOutputs`. An unknown
            product is labelled anomalous.
        """
        if self._uses_anomalib_path():
            self._features = None
            return super().forward(predictions)
        if predictions.pred_score is None and predictions.anomaly_map is None:
            msg = "At least one of pred_score or anomaly_map must be provided."
            raise ValueError(msg)
        pred_score, anomaly_map, pred_label, pred_mask, category = self._post_process(
            predictions.pred_score,
            predictions.anomaly_map,
        )
        if category is None:
            return InferenceBatch(
                pred_score=pred_score, pred_label=pred_label, anomaly_map=anomaly_map, pred_mask=pred_mask
            )
        batch_type = CategoryOutputs if self.export_category else CategoryInferenceBatch
        return batch_type(
            pred_score=pred_score,
            pred_label=pred_label,
            anomaly_map=anomaly_map,
            pred_mask=pred_mask,
            pred_category=category,
        )

    def post_process_batch(self, batch: Batch) -> None:
        """Post-process a test or predict batch in place; adds ``pred_category`` and ``pred_category_name``."""
        if self._uses_anomalib_path():
            self._features = None
            super().post_process_batch(batch)
            return
        pred_score, anomaly_map, pred_label, pred_mask, category = self._post_process(
            batch.pred_score, batch.anomaly_map
        )
        batch.pred_score, batch.anomaly_map = pred_score, anomaly_map
        if self.enable_thresholding:
            batch.pred_label = pred_label if batch.pred_label is None else batch.pred_label
            batch.pred_mask = pred_mask if batch.pred_mask is None else batch.pred_mask
        if category is not None:
            batch.pred_category = category
            batch.pred_category_name = [self.category_name(index) for index in category.tolist()]
