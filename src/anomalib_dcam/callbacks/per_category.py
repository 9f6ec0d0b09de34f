# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Per-category test metrics for any anomalib image model.

:class:`PerCategoryMetrics` reads ``pred_score``, ``anomaly_map``, ``gt_label``, ``gt_mask`` and ``image_path`` from
every test batch, groups the samples by category and, at the end of the test, reports for every category, for the
mean over categories and for all samples pooled ("global"):

* ``image_AUROC``: area under the ROC curve of ``pred_score`` against ``gt_label`` (anomalib ``AUROC``).
* ``image_F1Max``: the image F1 score at the F1-optimal threshold of that row (anomalib ``F1Max``): each category
  gets its own best threshold, the global row one threshold for all samples. It does not depend on the model's
  post-processor threshold, so it compares models fairly, but it is an upper bound of what a fixed threshold gives.
* ``pixel_AUROC``: area under the ROC curve of ``anomaly_map`` against ``gt_mask`` over all pixels (anomalib
  ``AUROC``).
* ``pixel_AUPRO``: area under the per-region-overlap curve up to a false positive rate of 0.3, divided by 0.3
  (anomalib ``AUPRO(fpr_limit=0.3)``).

The scores are the model's raw outputs. anomalib's post-processor normalises them during test and clips the result
to [0, 1]; with a validation set of normal images only that clipping ties many anomalous scores at 1, which would
change the AUROC. Trainer callbacks run before the model's own callbacks (Lightning appends those), so this callback
sees each batch before the post-processor touches it.

A row's metric is empty (NaN) when it is undefined: image metrics need normal and anomalous images, pixel metrics
need normal and anomalous pixels and a model that outputs anomaly maps. A category with image labels only (no
``ground_truth/`` folder, :func:`~anomalib_dcam.data.multiclass.categories_without_masks`) gets image metrics only;
the ``mean`` row's pixel metrics average the categories with masks, and the ``global`` row pools their pixels.
"""

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from anomalib.metrics import AUPRO, AUROC, F1Max
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from torch.nn import functional

from anomalib_dcam._validation import check_positive
from anomalib_dcam.data.multiclass import categories_by_image_path, categories_without_masks

__all__ = ["METRIC_NAMES", "PerCategoryMetrics", "compute_anomaly_metrics"]

logger = logging.getLogger(__name__)

METRIC_NAMES = ("image_AUROC", "image_F1Max", "pixel_AUROC", "pixel_AUPRO")
"""Names of the reported metrics, in report order."""

MEAN_ROW = "mean"
GLOBAL_ROW = "global"
DEFAULT_CATEGORY = "all"
"""Category of every sample when neither the data nor the datamodule names one."""


def _to_unit_interval(values: torch.Tensor) -> torch.Tensor:
    """Rescale to [0, 1] with one affine map (keeps the ranking).

    torchmetrics' curve metrics apply a sigmoid to any input outside [0, 1]; a sigmoid saturates for large raw
    scores (ties) and is decided per update, so raw scores are rescaled once over everything instead.
    """
    values = values.float()
    low, high = values.min(), values.max()
    if not bool(high > low):
        return torch.zeros_like(values)
    return (values - low) / (high - low)


def _local(metric: Any) -> Any:
    """Turn off a torchmetrics metric's synchronisation across processes (for options its constructor lacks)."""
    metric.sync_on_compute = False
    metric._to_sync = False  # torchmetrics reads this flag (set from sync_on_compute at init) in compute
    return metric


def _has_both_classes(target: torch.Tensor) -> bool:
    return bool(target.any()) and not bool(target.all())


def _metric_value(metric: Any, preds: torch.Tensor, target: torch.Tensor) -> float:
    """Feed one anomalib metric all values at once and return its value as a float."""
    metric.update(SimpleNamespace(preds=preds, target=target))
    return float(metric.compute())


def compute_anomaly_metrics(
    pred_scores: torch.Tensor,
    gt_labels: torch.Tensor,
    anomaly_maps: torch.Tensor | None = None,
    gt_masks: torch.Tensor | None = None,
    fpr_limit: float = 0.3,
) -> dict[str, float]:
    """Compute image AUROC, image F1Max, pixel AUROC and pixel AUPRO for one group of images.

    Args:
        pred_scores: Image anomaly scores, shape ``(N,)``; any range (higher means more anomalous).
        gt_labels: Image labels, shape ``(N,)``; 1 for anomalous.
        anomaly_maps: Anomaly maps, shape ``(N, H, W)``, or ``None`` for image metrics only.
        gt_masks: Ground-truth masks, shape ``(N, H, W)``; non-zero for anomalous pixels.
        fpr_limit: False positive rate up to which AUPRO integrates. Defaults to ``0.3``.

    Returns:
        ``{metric name: value}`` for :data:`METRIC_NAMES`; ``nan`` where a metric is undefined.

    Example:
        >>> import torch
        >>> metrics = compute_anomaly_metrics(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        >>> round(metrics["image_AUROC"], 4), round(metrics["image_F1Max"], 4)
        (0.75, 0.8)
    """
    results = dict.fromkeys(METRIC_NAMES, math.nan)
    labels = gt_labels.flatten().to(torch.int)
    if pred_scores.numel() and _has_both_classes(labels):
        scores = _to_unit_interval(pred_scores.flatten())
        fields = ["preds", "target"]
        # Local metrics: under DDP the samples are gathered first (PerCategoryMetrics), so no process syncs again.
        results["image_AUROC"] = _metric_value(AUROC(fields=fields, sync_on_compute=False), scores, labels)
        results["image_F1Max"] = _metric_value(F1Max(fields=fields, sync_on_compute=False), scores, labels)
    if anomaly_maps is not None and gt_masks is not None and anomaly_maps.numel():
        masks = (gt_masks > 0).to(torch.uint8)
        if _has_both_classes(masks):
            maps = _to_unit_interval(anomaly_maps)
            fields = ["preds", "target"]
            # validate_args=False skips torchmetrics' per-pixel value checks, which cost more than the metric.
            pixel_auroc = AUROC(fields=fields, validate_args=False, sync_on_compute=False)
            results["pixel_AUROC"] = _metric_value(pixel_auroc, maps, masks)
            pixel_aupro = _local(AUPRO(fields=fields, fpr_limit=fpr_limit))  # AUPRO takes no sync_on_compute
            results["pixel_AUPRO"] = _metric_value(pixel_aupro, maps, masks)
    return results


@dataclass
class _CategoryRecord:
    """What the test produced for one category, kept on the CPU until the test ends."""

    scores: list[torch.Tensor] = field(default_factory=list)
    labels: list[torch.Tensor] = field(default_factory=list)
    maps: list[torch.Tensor] = field(default_factory=list)
    masks: list[torch.Tensor] = field(default_factory=list)
    paths: list[str | None] = field(default_factory=list)

    def merged_with(self, others: Sequence["_CategoryRecord"]) -> "_CategoryRecord":
        """This record and those of the other processes, each image once (a distributed sampler repeats some)."""
        records = [self, *others]
        parts = [record.tensors() for record in records]
        keep = [[] for _ in records]
        seen: set[str] = set()
        for index, record in enumerate(records):
            for row, path in enumerate(record.paths):
                if path is None or path not in seen:
                    keep[index].append(row)
                    seen.update([path] if path is not None else [])
        merged = _CategoryRecord()
        for (scores, labels, maps, masks), rows, record in zip(parts, keep, records, strict=True):
            if scores is None or not rows:
                continue
            index = torch.tensor(rows)
            merged.scores.append(scores[index])
            merged.labels.append(labels[index])
            merged.paths.extend(record.paths[row] for row in rows)
            if maps is not None:
                merged.maps.append(maps[index])
                merged.masks.append(masks[index])
        return merged

    @staticmethod
    def _cat(parts: Sequence[torch.Tensor]) -> torch.Tensor | None:
        return torch.cat(list(parts)) if parts else None

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Concatenate the batches (and keep only the concatenation, so the pieces are freed)."""
        scores, labels = self._cat(self.scores), self._cat(self.labels)
        # Pixel metrics only when every batch of the group had maps and masks.
        has_pixels = len(self.maps) == len(self.scores)
        maps = self._cat(self.maps) if has_pixels else None
        masks = self._cat(self.masks) if has_pixels else None
        self.scores, self.labels = [scores], [labels]
        self.maps, self.masks = ([maps], [masks]) if has_pixels else ([], [])
        return scores, labels, maps, masks


class PerCategoryMetrics(Callback):
    """Report image and pixel metrics per category, their mean over categories, and over all samples, after test.

    Works with any anomalib image model: it only reads ``pred_score``, ``anomaly_map``, ``gt_label``, ``gt_mask``
    and ``image_path`` from the test batches. The category of a sample comes from the ``category`` column of the
    test dataset (:class:`anomalib_dcam.data.MultiClassMVTec`); with any other datamodule every sample belongs to
    one category named after ``datamodule.category`` (``"all"`` when it has none).

    Metrics (see the module docstring for the details): ``image_AUROC``, ``image_F1Max`` (F1 at the F1-optimal
    threshold of each row, not the post-processor's threshold), ``pixel_AUROC`` and ``pixel_AUPRO`` (up to
    ``fpr_limit``). They are computed from the raw scores, before anomalib's post-processor normalises them.

    At the end of the test the callback prints a table and writes ``<filename>.csv`` and ``<filename>.json`` to
    ``output_dir``, by default ``trainer.default_root_dir`` (the run's results folder, e.g.
    ``results/Dcam/MultiClassMVTec/all/v0``). The rows are the categories, then ``mean`` (mean over categories,
    skipping undefined values) and ``global`` (all samples pooled). The last report is also kept in
    :attr:`results`.

    Memory: the raw scores, anomaly maps (float32) and masks (uint8) of the test set stay on the CPU until the end,
    about ``N * H * W * 5`` bytes (0.6 GB for MVTec AD at 256 px), because exact AUROC and AUPRO need every pixel.
    anomalib's exact pixel AUROC and AUPRO then need about 40 and 60 bytes per pixel while they run, one group at a
    time: for the pooled row of MVTec AD at 256 px (113 M pixels) that is about 7 GB for a moment, and a few minutes
    on two CPU cores. ``global_pixel_metrics=False`` skips the pooled pixel metrics; the largest category then
    bounds the peak.

    Args:
        fpr_limit: False positive rate up to which AUPRO integrates. Defaults to ``0.3``.
        output_dir: Folder of the CSV and JSON files; ``None`` for ``trainer.default_root_dir``.
        filename: Stem of the CSV and JSON files. Defaults to ``"per_category_metrics"``.
        print_table: Print the table at the end of the test. Defaults to ``True``.
        global_pixel_metrics: Compute pixel AUROC and AUPRO over all pixels pooled for the ``global`` row.
            Defaults to ``True``.
        save_scores: Write every test image's raw score, label and category to ``<filename>_scores.csv`` before
            any metric is computed, so that a failure in the metrics loses no prediction. Defaults to ``False``.

    Raises:
        ValueError: If ``fpr_limit`` is not in (0, 1] or ``filename`` is empty.

    Example:
        >>> from anomalib.engine import Engine
        >>> engine = Engine(callbacks=[PerCategoryMetrics()])
        >>> engine.test(model=model, datamodule=datamodule)  # doctest: +SKIP

        From the command line: ``--trainer.callbacks+=anomalib_dcam.callbacks.PerCategoryMetrics``.
    """

    def __init__(
        self,
        fpr_limit: float = 0.3,
        output_dir: str | Path | None = None,
        filename: str = "per_category_metrics",
        print_table: bool = True,
        global_pixel_metrics: bool = True,
        save_scores: bool = False,
    ) -> None:
        super().__init__()
        self.fpr_limit = check_positive(fpr_limit, "fpr_limit")
        if self.fpr_limit > 1:
            msg = f"fpr_limit={fpr_limit!r} is not accepted; it must be in (0, 1]."
            raise ValueError(msg)
        if not filename:
            msg = "filename='' is not accepted; give the stem of the CSV and JSON files, e.g. 'per_category_metrics'."
            raise ValueError(msg)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.filename = filename
        self.print_table = print_table
        self.global_pixel_metrics = global_pixel_metrics
        self.save_scores = save_scores
        self.results: list[dict[str, Any]] = []
        self._records: dict[str, _CategoryRecord] = {}
        self._category_of: dict[str, str] | None = None
        self._without_masks: set[str] = set()
        self._default_category = DEFAULT_CATEGORY

    # ------------------------------------------------------------------ collection

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Forget the previous test's samples."""
        del pl_module
        self._records = {}
        self._category_of = None
        self._without_masks = set()
        datamodule = getattr(trainer, "datamodule", None)
        self._default_category = getattr(datamodule, "category", None) or DEFAULT_CATEGORY

    def _lookup_categories(self, trainer: Trainer) -> dict[str, str]:
        """Build the image path to category map from the test datasets, once per test."""
        if self._category_of is None:
            self._category_of = {}
            datamodule = getattr(trainer, "datamodule", None)
            datasets = [getattr(datamodule, "test_data", None)]
            dataloaders = trainer.test_dataloaders
            if dataloaders is not None:
                dataloaders = dataloaders if isinstance(dataloaders, Sequence) else [dataloaders]
                datasets += [getattr(dataloader, "dataset", None) for dataloader in dataloaders]
            for dataset in datasets:
                if dataset is not None:
                    self._category_of.update(categories_by_image_path(dataset))
                    self._without_masks |= categories_without_masks(dataset)
        return self._category_of

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep the batch's scores, labels, maps and masks, grouped by category."""
        del pl_module, batch_idx, dataloader_idx
        source = outputs if getattr(outputs, "pred_score", None) is not None else batch
        scores = getattr(source, "pred_score", None)
        anomaly_maps = getattr(source, "anomaly_map", None)
        labels = getattr(source, "gt_label", None)
        if scores is None and anomaly_maps is not None:
            scores = torch.amax(anomaly_maps, dim=tuple(range(1, anomaly_maps.dim())))
        if scores is None or labels is None:
            return
        scores = scores.detach().flatten().float().cpu()
        labels = labels.detach().flatten().to(torch.uint8).cpu()
        masks = getattr(source, "gt_mask", None)
        if anomaly_maps is not None and masks is not None:
            masks = masks.detach().cpu()
            masks = masks.reshape(masks.shape[0], *masks.shape[-2:])
            anomaly_maps = anomaly_maps.detach().float()
            anomaly_maps = anomaly_maps.reshape(anomaly_maps.shape[0], 1, *anomaly_maps.shape[-2:])
            if anomaly_maps.shape[-2:] != masks.shape[-2:]:
                anomaly_maps = functional.interpolate(anomaly_maps, size=masks.shape[-2:], mode="bilinear")
            anomaly_maps = anomaly_maps[:, 0].cpu()
            masks = (masks > 0).to(torch.uint8)
        else:
            anomaly_maps = masks = None

        category_of = self._lookup_categories(trainer)
        paths = getattr(source, "image_path", None) or [None] * len(scores)
        categories = [category_of.get(str(path), self._default_category) for path in paths]
        for category in dict.fromkeys(categories):
            # Indexing with a tensor copies, so later in-place changes to the batch cannot reach what is kept.
            index = torch.tensor([i for i, name in enumerate(categories) if name == category])
            record = self._records.setdefault(category, _CategoryRecord())
            record.scores.append(scores[index])
            record.labels.append(labels[index])
            record.paths.extend(None if paths[i] is None else str(paths[i]) for i in index.tolist())
            if anomaly_maps is not None and category not in self._without_masks:  # image labels only: no pixels
                record.maps.append(anomaly_maps[index])
                record.masks.append(masks[index])

    # ------------------------------------------------------------------ report

    def compute(self) -> list[dict[str, Any]]:
        """Compute the rows of the report from the samples collected so far.

        Returns:
            One dict per category (sorted by name), then the ``mean`` and ``global`` rows. Every row has
            ``category``, ``images``, ``anomalous_images``, ``masks`` (whether the category has pixel masks;
            ``None`` in the ``mean`` and ``global`` rows) and the :data:`METRIC_NAMES`.
        """
        rows = []
        all_parts: list[tuple[torch.Tensor, ...]] = []
        for category in sorted(self._records):
            scores, labels, maps, masks = self._records[category].tensors()
            all_parts.append((scores, labels, maps, masks))
            metrics = compute_anomaly_metrics(scores, labels, maps, masks, fpr_limit=self.fpr_limit)
            masks_known = category not in self._without_masks
            rows.append({"category": category, **self._counts(labels), "masks": masks_known, **metrics})
        if not rows:
            return []
        mean_row: dict[str, Any] = {"category": MEAN_ROW, "images": None, "anomalous_images": None, "masks": None}
        for name in METRIC_NAMES:
            values = [row[name] for row in rows if not math.isnan(row[name])]
            mean_row[name] = sum(values) / len(values) if values else math.nan
        scores = torch.cat([part[0] for part in all_parts])
        labels = torch.cat([part[1] for part in all_parts])
        # The pooled pixel metrics cover the categories with masks (those with image labels only have no pixels).
        pixel_parts = [part for part in all_parts if part[2] is not None]
        has_pixels = self.global_pixel_metrics and bool(pixel_parts)
        maps = torch.cat([part[2] for part in pixel_parts]) if has_pixels else None
        masks = torch.cat([part[3] for part in pixel_parts]) if has_pixels else None
        global_metrics = compute_anomaly_metrics(scores, labels, maps, masks, fpr_limit=self.fpr_limit)
        global_row = {"category": GLOBAL_ROW, **self._counts(labels), "masks": None, **global_metrics}
        return [*rows, mean_row, global_row]

    @staticmethod
    def _counts(labels: torch.Tensor) -> dict[str, int]:
        return {"images": int(labels.numel()), "anomalous_images": int((labels > 0).sum())}

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute the report, print it and write the CSV and JSON files."""
        del pl_module
        if trainer.world_size > 1:
            self._gather(trainer)
        if self.save_scores:
            self._write_scores(Path(self.output_dir or trainer.default_root_dir))
        self.results = self.compute()
        self._records = {}  # free the maps
        if not self.results:
            logger.warning("PerCategoryMetrics: the test batches carried no pred_score and gt_label; no report.")
            return
        self._report(Path(self.output_dir or trainer.default_root_dir))

    def _gather(self, trainer: Trainer) -> None:
        """Collect every process's samples, so that each image counts once, as in a one-process test."""
        gathered: list[dict[str, _CategoryRecord]] = [{} for _ in range(trainer.world_size)]
        torch.distributed.all_gather_object(gathered, self._records)
        own = gathered[trainer.global_rank]
        others = [records for rank, records in enumerate(gathered) if rank != trainer.global_rank]
        categories = dict.fromkeys(name for records in gathered for name in records)
        self._records = {
            name: own.get(name, _CategoryRecord()).merged_with([records[name] for records in others if name in records])
            for name in categories
        }
        if any(path is None for record in self._records.values() for path in record.paths):
            logger.warning(
                "PerCategoryMetrics: some test batches carry no image_path, so images that the distributed sampler "
                "repeated to even out the processes cannot be recognised and may count twice.",
            )

    @rank_zero_only
    def _write_scores(self, output_dir: Path) -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        with (output_dir / f"{self.filename}_scores.csv").open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["image_path", "category", "gt_label", "pred_score"])
            for category, record in sorted(self._records.items()):
                scores, labels, _, _ = record.tensors()
                paths = record.paths or [None] * len(scores)
                writer.writerows(zip(paths, [category] * len(scores), labels.tolist(), scores.tolist(), strict=True))

    @rank_zero_only
    def _report(self, output_dir: Path) -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        csv_path = output_dir / f"{self.filename}.csv"
        json_path = output_dir / f"{self.filename}.json"
        write_csv(self.results, csv_path)
        write_json(self.results, json_path, fpr_limit=self.fpr_limit)
        if self.print_table:  # the report is meant for the console, whatever the logging set-up
            print(f"{format_table(self.results)}\nWritten to {csv_path} and {json_path}")
        else:
            logger.info("Per-category metrics written to %s and %s", csv_path, json_path)


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(rows[0]) if rows else ["category", "images", "anomalous_images", "masks", *METRIC_NAMES]


def is_missing(value: object) -> bool:
    """Whether a report value is undefined: ``None``, NaN, or the empty cell a CSV file gives for one."""
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Write the report rows as CSV; undefined values are left empty."""
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=_columns(rows))
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if is_missing(value) else value for key, value in row.items()})


def write_json(rows: Sequence[Mapping[str, Any]], path: Path, fpr_limit: float) -> None:
    """Write the report as JSON: ``per_category``, ``mean`` and ``global`` sections; undefined values are null."""

    def clean(row: Mapping[str, Any]) -> dict[str, Any]:
        return {key: None if is_missing(value) else value for key, value in row.items() if key != "category"}

    report = {
        "per_category": {row["category"]: clean(row) for row in rows[:-2]},
        MEAN_ROW: clean(rows[-2]),
        GLOBAL_ROW: clean(rows[-1]),
        "definitions": {
            "image_AUROC": "area under the ROC curve of the image scores",
            "image_F1Max": "image F1 at the F1-optimal threshold of each row (global: one threshold for all images)",
            "pixel_AUROC": "area under the ROC curve of the anomaly-map pixels",
            "pixel_AUPRO": f"area under the per-region-overlap curve up to FPR {fpr_limit}, divided by {fpr_limit}",
            "masks": "whether the category has pixel masks (without them: image metrics only)",
            "mean": "mean over the categories of the defined values",
            "scores": "raw model outputs, before anomalib's post-processing",
        },
    }
    path.write_text(json.dumps(report, indent=2) + "\n")


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Format the report rows as a plain-text table (metrics with 4 decimals, ``-`` where undefined)."""
    columns = _columns(rows)

    def cell(value: object) -> str:
        if is_missing(value):
            return "-"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    table = [columns, *[[cell(row[column]) for column in columns] for row in rows]]
    widths = [max(len(line[index]) for line in table) for index in range(len(columns))]
    lines = [
        "  ".join(
            text.ljust(width) if index == 0 else text.rjust(width)
            for index, (text, width) in enumerate(zip(line, widths, strict=True))
        )
        for line in table
    ]
    rule = "-" * len(lines[0])
    separator_at = len(rows) - 1  # a rule above the mean and global rows
    return "\n".join(
        ["Per-category test metrics", rule, lines[0], rule, *lines[1:separator_at], rule, *lines[separator_at:], rule]
    )
