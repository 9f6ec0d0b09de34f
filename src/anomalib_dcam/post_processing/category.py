# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""One deployed model for every product: the model recognises the product, then applies that product's calibration.

A unified model scores every category on its own scale, so one threshold and one normalisation range (anomalib's
:class:`~anomalib.post_processing.PostProcessor`) misjudge most of them. :class:`CategoryPostProcessor` keeps, per
training category,

- a prototype of the frozen teacher's globally pooled features of its training normals (computed when fitting
  starts), which recognises the category of each image at inference (nearest prototype, cosine distance);
- a distance limit (``unknown_margin`` x the largest distance of that category's training normals, and at least a
  quarter of the way to the nearest other product), beyond which the image is flagged as an unknown product
  (``pred_category = -1``) and reported anomalous;
- image and pixel thresholds and normalisation ranges computed from that category's validation images only.

Everything is a buffer or plain tensor ops, so recognition and per-category post-processing export to ONNX and
OpenVINO with the model (an extra ``pred_category`` output). The features are read with a forward hook on the model's
frozen feature extractor (``model.teacher_model`` for Dcam and Stfpm), so the teacher runs once per image. With one
category (or data without categories) it is exactly anomalib's post-processor.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any, NamedTuple

import torch
from anomalib.data import Batch, InferenceBatch
from anomalib.metrics import F1AdaptiveThreshold, MinMax
from anomalib.models.components.base.dynamic_buffer import DynamicBufferMixin
from anomalib.post_processing import PostProcessor
from lightning import LightningModule, Trainer
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader

from anomalib_dcam._validation import check_positive
from anomalib_dcam.deploy.categories import category_name

logger = logging.getLogger(__name__)

UNKNOWN_CATEGORY = -1
"""``pred_category`` of an image that is farther from every category's prototype than that category's limit."""


UNKNOWN_SEPARATION_FRACTION = 0.25
"""Smallest unknown-product limit, as a fraction of the distance to the nearest other category's prototype."""

FEATURE_MODULE_CANDIDATES = ("model.teacher_model", "model.teacher", "model.feature_extractor")
"""Attributes (relative to the Lightning module) searched for the frozen feature extractor, in order."""

_CALIBRATION_BUFFERS = (
    "category_image_threshold",
    "category_pixel_threshold",
    "category_image_min",
    "category_image_max",
    "category_pixel_min",
    "category_pixel_max",
)

_METRIC_FIELDS = ("pred_score", "gt_label", "anomaly_map", "gt_mask")


class CategoryInferenceBatch(NamedTuple):
    """anomalib's :class:`~anomalib.data.InferenceBatch` plus the recognised category of each image.

    ``pred_category`` is the index into the model's category names, or :data:`UNKNOWN_CATEGORY`.
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


class CategoryRecognizer(DynamicBufferMixin, nn.Module):
    """Nearest-prototype recognition of the product, with an unknown-product limit per category.

    Args:
        unknown_margin: An image is unknown when its cosine distance to the nearest prototype exceeds
            ``unknown_margin`` times the largest distance seen among that category's training normals, and also
            :data:`UNKNOWN_SEPARATION_FRACTION` of the distance from that prototype to the nearest other one. The
            limits are fixed when the prototypes are fitted (at the start of training).
    """

    def __init__(self, unknown_margin: float = 2.0) -> None:
        super().__init__()
        self.unknown_margin = check_positive(unknown_margin, "unknown_margin")
        self.register_buffer("prototypes", torch.empty(0, 0))
        self.register_buffer("distance_limits", torch.empty(0))
        self.prototypes: torch.Tensor
        self.distance_limits: torch.Tensor

    @property
    def num_categories(self) -> int:
        """Number of categories with a prototype (0 before fitting)."""
        return int(self.prototypes.shape[0])

    def fit(self, features: torch.Tensor, categories: torch.Tensor, num_categories: int) -> None:
        """Compute each category's prototype and distance limit from its training normals.

        Args:
            features: ``(N, D)`` output of :func:`pooled_features`.
            categories: ``(N,)`` category index of each row.
            num_categories: Number of categories; each must have at least one row.

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
        distances = 1 - (features * prototypes[categories]).sum(dim=1)
        largest = torch.zeros(num_categories, dtype=features.dtype).scatter_reduce_(
            0, categories, distances, reduce="amax"
        )
        # A floor keeps a category whose normals are all alike from flagging each of its defective images: a known
        # product is never unknown within a quarter of the way to the nearest other product's prototype.
        separation = 1 - prototypes @ prototypes.T
        separation.fill_diagonal_(float("inf"))
        nearest_other = separation.amin(dim=1)
        floor = UNKNOWN_SEPARATION_FRACTION * torch.where(nearest_other.isinf(), 0, nearest_other)
        limits = torch.maximum(self.unknown_margin * largest, floor)
        self.prototypes = prototypes.to(self.prototypes.device)
        self.distance_limits = limits.to(self.distance_limits.device)

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
    """anomalib's post-processor with per-category calibration, chosen by the model's own product recognition.

    Pass it as ``post_processor=CategoryPostProcessor()`` to any anomalib image model with a frozen feature extractor
    (Dcam uses it by default) and train on :class:`~anomalib_dcam.data.MultiClassMVTec`. The category names come
    from ``datamodule.categories`` and travel with the checkpoint; each validation image's category comes from its
    path (``samples.category``).

    Args:
        unknown_margin: Unknown-product margin, see :class:`CategoryRecognizer`. Defaults to ``2.0``.
        feature_module: Dotted path, relative to the Lightning module, of the frozen feature extractor whose output
            describes the product; ``None`` tries ``model.teacher_model``, ``model.teacher`` and
            ``model.feature_extractor``.
        category_calibration: ``False`` applies anomalib's single threshold and range to every category (the
            category is still recognised and returned). A deploy-time switch, not saved in checkpoints. Defaults to
            ``True``.
        recognize_single_category: Also recognise the product for a model trained on one category, so that other
            products are flagged unknown. ``False`` (the default) keeps a one-category model exactly anomalib's.
        normal_quantile: When set (e.g. ``0.99``), each category's image threshold is this quantile of its held-out
            normal validation scores (a false-alarm budget) instead of anomalib's F1-optimal threshold over its
            normals and synthetic anomalies. ``None`` (the default) keeps anomalib's threshold.
        known_category: Name of the product every image shows, when the line knows it: its calibration is applied
            without recognition (nothing is flagged unknown). Not saved in checkpoints; ``None`` (the default)
            recognises each image.
        **kwargs: Options of :class:`~anomalib.post_processing.PostProcessor` (sensitivities and switches).

    Example:
        >>> from anomalib.models import Stfpm
        >>> model = Stfpm(post_processor=CategoryPostProcessor())  # doctest: +SKIP
    """

    def __init__(
        self,
        unknown_margin: float = 2.0,
        feature_module: str | None = None,
        category_calibration: bool = True,
        recognize_single_category: bool = False,
        known_category: str | None = None,
        normal_quantile: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.recognizer = CategoryRecognizer(unknown_margin)
        self.feature_module = feature_module
        self.category_calibration = bool(category_calibration)
        self.recognize_single_category = bool(recognize_single_category)
        self.known_category = known_category
        if normal_quantile is not None and not 0 < normal_quantile <= 1:
            msg = f"normal_quantile={normal_quantile!r} is not accepted; use a number in (0, 1], e.g. 0.99, or None."
            raise ValueError(msg)
        self.normal_quantile = normal_quantile
        self.category_names: list[str] = []
        for name in _CALIBRATION_BUFFERS:
            self.register_buffer(name, torch.empty(0))
        self._features: torch.Tensor | None = None
        self._val_categories: dict[str, int] = {}
        self._category_outputs: dict[str, tuple[int, dict[str, torch.Tensor | None]]] = {}

    # -- configuration persisted in checkpoints ---------------------------------------------------------------------

    @property
    def _checkpoint_config_keys(self) -> tuple[str, ...]:
        return (
            *super()._checkpoint_config_keys,
            "feature_module",
            "recognize_single_category",
            "normal_quantile",
            "category_names",
        )

    def checkpoint_config(self) -> dict[str, Any]:
        """Plain-data configuration, the category names and the unknown-product margin included."""
        return {**super().checkpoint_config(), "unknown_margin": self.recognizer.unknown_margin}

    def load_checkpoint_config(self, config: dict[str, Any]) -> None:
        """Restore :meth:`checkpoint_config`."""
        super().load_checkpoint_config(config)
        if "unknown_margin" in config:
            self.recognizer.unknown_margin = float(config["unknown_margin"])
        self.category_names = [str(name) for name in self.category_names or []]

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        # Checkpoints written with anomalib's own PostProcessor lack the category buffers: keep them empty.
        defaults = {name: getattr(self, name) for name in _CALIBRATION_BUFFERS}
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
        if self.is_multi_category:  # a one-category model's graph stays exactly anomalib's
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

    # -- fitting: prototypes and per-category calibration ---------------------------------------------------------

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute the category prototypes from the frozen teacher's features of the training normals."""
        datamodule = getattr(trainer, "datamodule", None)
        names = [str(name) for name in getattr(datamodule, "categories", None) or []]
        train_data = getattr(datamodule, "train_data", None)
        if len(names) < (1 if self.recognize_single_category else 2) or train_data is None:
            return  # one category: anomalib's post-processing, unchanged
        from anomalib_dcam.data.multiclass import categories_by_image_path

        category_of = categories_by_image_path(train_data)
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
        self.recognizer.fit(torch.cat(features), torch.tensor(categories), len(names))
        self.category_names = names
        self.to(pl_module.device)
        logger.info(
            "Category recognition: prototypes of %s; unknown beyond cosine distance %s.",
            ", ".join(names),
            ", ".join(f"{limit:.4f}" for limit in self.recognizer.distance_limits.tolist()),
        )

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start collecting each validation image's outputs under its own category."""
        del pl_module
        self._category_outputs = {}
        if not self.is_multi_category:
            return
        from anomalib_dcam.data.multiclass import categories_by_image_path

        index_of = {name: index for index, name in enumerate(self.category_names)}
        val_data = getattr(getattr(trainer, "datamodule", None), "val_data", None)
        self._val_categories = {
            path: index_of[category]
            for path, category in (categories_by_image_path(val_data) if val_data is not None else {}).items()
            if category in index_of
        }

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Batch,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        """Update anomalib's overall statistics and keep each image's outputs under its category, on the CPU."""
        super().on_validation_batch_end(trainer, pl_module, outputs, *args, **kwargs)
        self._features = None
        if not self.is_multi_category:
            return
        for row, path in enumerate(outputs.image_path):
            category = self._val_categories.get(str(path))
            if category is None:
                continue
            values = {field: getattr(outputs, field, None) for field in _METRIC_FIELDS}
            self._category_outputs[str(path)] = (
                category,
                {
                    field: None if value is None else value[row].detach().cpu().clone()
                    for field, value in values.items()
                },
            )

    def _gathered_outputs(self, trainer: Trainer) -> dict[str, tuple[int, dict[str, torch.Tensor | None]]]:
        """Every process's validation outputs, each image once (keyed by path: a distributed sampler repeats some)."""
        world_size = getattr(trainer, "world_size", 1)
        if world_size <= 1:
            return self._category_outputs
        gathered: list[dict] = [{} for _ in range(world_size)]
        torch.distributed.all_gather_object(gathered, self._category_outputs)
        return {path: value for outputs in gathered for path, value in outputs.items()}

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute anomalib's overall values, then each category's (a category without data keeps the overall)."""
        super().on_validation_epoch_end(trainer, pl_module)
        if not self.is_multi_category:
            return
        outputs = self._gathered_outputs(trainer)
        self._category_outputs = {}
        overall = {
            "category_image_threshold": self._image_threshold,
            "category_pixel_threshold": self._pixel_threshold,
            "category_image_min": self.image_min,
            "category_image_max": self.image_max,
            "category_pixel_min": self.pixel_min,
            "category_pixel_max": self.pixel_max,
        }
        values: dict[str, list[float]] = {name: [] for name in _CALIBRATION_BUFFERS}
        for index in range(len(self.category_names)):
            rows = [row for category, row in outputs.values() if category == index]
            computed = self._category_calibration(rows)
            for name in _CALIBRATION_BUFFERS:
                values[name].append(float(computed.get(name, overall[name])))
        for name, column in values.items():
            setattr(self, name, torch.tensor(column, device=overall[name].device))

    def _category_calibration(self, rows: list[dict[str, torch.Tensor | None]]) -> dict[str, torch.Tensor]:
        """Anomalib's thresholds and ranges of one category's validation outputs (empty without any)."""
        if not rows:
            return {}
        stacked = SimpleNamespace(
            **{
                field: None if any(row[field] is None for row in rows) else torch.stack([row[field] for row in rows])
                for field in _METRIC_FIELDS
            },
        )
        # Every process holds all the rows already: no synchronisation (the processes could disagree on which
        # categories they saw, and a collective call would then wait forever).
        metrics = {
            "image_threshold": F1AdaptiveThreshold(
                fields=["pred_score", "gt_label"], strict=False, sync_on_compute=False
            ),
            "pixel_threshold": F1AdaptiveThreshold(
                fields=["anomaly_map", "gt_mask"], strict=False, sync_on_compute=False
            ),
            "image_range": MinMax(fields=["pred_score"], strict=False, sync_on_compute=False),
            "pixel_range": MinMax(fields=["anomaly_map"], strict=False, sync_on_compute=False),
        }
        computed: dict[str, torch.Tensor] = {}
        for name, metric in metrics.items():
            if not (self.enable_normalization if name.endswith("range") else self.enable_thresholding):
                continue
            metric.update(stacked)
            if not metric.update_called:
                continue
            if name.endswith("threshold"):
                computed[f"category_{name}"] = metric.compute()
            else:
                low, high = metric.compute()
                level = name.split("_")[0]
                computed[f"category_{level}_min"], computed[f"category_{level}_max"] = low, high
        normal_scores = (
            stacked.pred_score.flatten()[stacked.gt_label.flatten() == 0] if stacked.gt_label is not None else None
        )
        if (
            self.normal_quantile is not None
            and self.enable_thresholding
            and normal_scores is not None
            and normal_scores.numel()
        ):
            # A false-alarm budget on the held-out normals, for when the synthetic anomalies are too faint to place
            # an F1-optimal threshold (it then falls to the lowest score and every image is flagged).
            computed["category_image_threshold"] = torch.quantile(normal_scores.float(), self.normal_quantile)
        return computed

    # -- applying it ----------------------------------------------------------------------------------------------

    def _calibration(self, nearest: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image thresholds and ranges of the recognised (nearest) category, falling back to the overall ones."""
        image_threshold, pixel_threshold = self.image_threshold, self.pixel_threshold
        overall = {
            "image_threshold": image_threshold,
            "pixel_threshold": pixel_threshold,
            "image_min": self.image_min,
            "image_max": self.image_max,
            "pixel_min": self.pixel_min,
            "pixel_max": self.pixel_max,
        }
        if not self.category_calibration or self.category_image_threshold.numel() != self.recognizer.num_categories:
            return {name: value.expand(nearest.shape) for name, value in overall.items()}
        calibration = {}
        for name, value in overall.items():
            per_category = getattr(self, f"category_{name}")[nearest]
            calibration[name] = torch.where(torch.isnan(per_category), value, per_category)
        return calibration

    def _post_process(
        self,
        pred_score: torch.Tensor | None,
        anomaly_map: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """Recognise, normalise and threshold one batch; returns score, map, label, mask and category."""
        category, nearest = self.recognizer(self._take_features().to(self.recognizer.prototypes.device))
        if self.known_category is not None:
            category = nearest = torch.full_like(nearest, self._known_category_index())
        if pred_score is None:
            pred_score = torch.amax(anomaly_map, dim=(-2, -1)).reshape(-1)
        calibration = self._calibration(nearest)

        def per_image(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            return value.reshape(-1, *([1] * (like.dim() - 1)))

        if self.enable_normalization:
            pred_score = self._normalize(
                pred_score,
                per_image(calibration["image_min"], pred_score),
                per_image(calibration["image_max"], pred_score),
                per_image(calibration["image_threshold"], pred_score),
            )
            if anomaly_map is not None:
                anomaly_map = self._normalize(
                    anomaly_map,
                    per_image(calibration["pixel_min"], anomaly_map),
                    per_image(calibration["pixel_max"], anomaly_map),
                    per_image(calibration["pixel_threshold"], anomaly_map),
                )
        pred_label = pred_mask = None
        if self.enable_thresholding:
            unknown = category == UNKNOWN_CATEGORY
            pred_label = (pred_score > self.normalized_image_threshold) | per_image(unknown, pred_score)
            if anomaly_map is not None:
                pred_mask = anomaly_map > self.normalized_pixel_threshold
        return pred_score, anomaly_map, pred_label, pred_mask, category

    def forward(self, predictions: InferenceBatch) -> InferenceBatch | CategoryInferenceBatch:
        """Post-process the model's predictions, with the recognised category's calibration.

        Returns:
            anomalib's :class:`~anomalib.data.InferenceBatch` for a one-category model, else a
            :class:`CategoryInferenceBatch` (``pred_category`` added). An unknown product is labelled anomalous.
        """
        if not self.is_multi_category:
            self._features = None
            return super().forward(predictions)
        if predictions.pred_score is None and predictions.anomaly_map is None:
            msg = "At least one of pred_score or anomaly_map must be provided."
            raise ValueError(msg)
        pred_score, anomaly_map, pred_label, pred_mask, category = self._post_process(
            predictions.pred_score,
            predictions.anomaly_map,
        )
        return CategoryInferenceBatch(
            pred_score=pred_score,
            pred_label=pred_label,
            anomaly_map=anomaly_map,
            pred_mask=pred_mask,
            pred_category=category,
        )

    def post_process_batch(self, batch: Batch) -> None:
        """Post-process a test or predict batch in place; adds ``pred_category`` and ``pred_category_name``."""
        if not self.is_multi_category:
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
        batch.pred_category = category
        batch.pred_category_name = [self.category_name(index) for index in category.tolist()]
