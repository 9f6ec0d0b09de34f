# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""The benchmark's report: ``results.csv``, ``per_category.csv``, ``results.md`` and PNG figures.

Rows are built from the job folders, so the report always shows every finished phase, including those of earlier
runs. Quality columns are filled only from a ``full`` job's test; a speed-only job has none, whatever its files say.
"""

import csv
import json
import math
import platform
import statistics
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anomalib_dcam.callbacks.per_category import is_missing

from .config import RUNTIMES, BenchmarkConfig
from .records import environment
from .timing import available_cpus, cpu_name
from .worker import output_file, read_json

if TYPE_CHECKING:
    from .runner import JobOutcome

__all__ = [
    "QUALITY_METRICS",
    "RESULT_COLUMNS",
    "column_mean",
    "format_cell",
    "format_per_seed",
    "job_row",
    "markdown_table",
    "mean_std",
    "paired_differences",
    "seed_tables",
    "write_report",
]

QUALITY_METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "image_F1Max")
"""Quality columns: from :class:`anomalib_dcam.callbacks.PerCategoryMetrics`, mean over the datamodule's categories."""

RUNTIME_LABELS = {
    "torch": "PyTorch",
    "openvino_fp32": "OpenVINO FP32",
    "openvino_fp16": "OpenVINO FP16",
    "openvino_int8": "OpenVINO INT8",
}
_RUNTIME_MEASURES = ("size_mb", "latency_ms", "throughput_ips", "peak_rss_mb")
# One line per group: the job, training, model size and timing settings, timings per runtime, what ran.
RESULT_COLUMNS = (
    "model", "data", "seed", "status", "mode", "weights", *QUALITY_METRICS,
    "epochs", "train_images_seen", "fit_s", "train_images_per_s", "train_peak_rss_mb", "test_s",
    "params", "trainable_params", "throughput_batch_size", "threads", "precision_hints",
    *(f"{runtime}_{measure}" for runtime in RUNTIMES for measure in _RUNTIME_MEASURES),
    "message", "model_class", "model_args", "data_class", "data_args", "trainer", "job_key", "job_dir",
)  # fmt: skip
"""Columns of ``results.csv``, one row per job; empty where a value was not measured."""

PER_CATEGORY_COLUMNS = ("model", "data", "seed", "category", "images", "anomalous_images", *QUALITY_METRICS, "job_key")


def job_row(outcome: "JobOutcome", config: BenchmarkConfig) -> dict[str, Any]:
    """One row of ``results.csv`` for a job (see :data:`RESULT_COLUMNS`)."""
    planned, job_dir = outcome.planned, outcome.job_dir
    job = planned.job
    train = read_json(job_dir / output_file("train")) or {}
    export = read_json(job_dir / output_file("export")) or {}
    row: dict[str, Any] = dict.fromkeys(RESULT_COLUMNS)
    row.update(
        model=job.model.name,
        data=job.data.name,
        seed=job.seed,
        status=outcome.status,
        mode=planned.mode,
        weights=planned.weights if planned.weights_available else f"random: {planned.weights}",
        message=outcome.message,
        model_class=job.model.class_path,
        model_args=json.dumps(job.model.init_args, sort_keys=True, default=str),
        data_class=job.data.class_path,
        data_args=json.dumps(job.data_init_args, sort_keys=True, default=str),
        trainer=json.dumps(job.trainer, sort_keys=True, default=str),
        job_key=job.key,
        job_dir=str(job_dir),
    )
    if outcome.status == "skipped":
        return row
    metrics = train.get("metrics") or {}
    if not job.speed_only:  # weights honesty: random weights never get quality numbers
        row.update({name: metrics.get(name) for name in QUALITY_METRICS})
    for name in ("epochs", "train_images_seen", "fit_s", "train_images_per_s", "train_peak_rss_mb", "test_s"):
        row[name] = train.get(name)
    row["trainable_params"] = train.get("trainable_params")
    row["params"] = export.get("params")
    row["throughput_batch_size"] = config.inference.batch_size
    row["torch_size_mb"] = train.get("torch_size_mb")
    for runtime, exported in export.get("runtimes", {}).items():
        row[f"{runtime}_size_mb"] = exported.get("size_mb")
    for runtime in config.inference.runtimes:
        latency = read_json(job_dir / output_file("latency", runtime)) or {}
        for measure in ("latency_ms", "throughput_ips", "peak_rss_mb"):
            row[f"{runtime}_{measure}"] = latency.get(measure)
        row["threads"] = latency.get("threads", row["threads"])  # the same for every runtime of a job
    if not is_missing(row["threads"]):
        row["precision_hints"] = json.dumps(config.inference.precision_hints, sort_keys=True)
    return row


def per_category_rows(outcome: "JobOutcome") -> list[dict[str, Any]]:
    """Rows of ``per_category.csv`` for a full job: each category, ``mean`` and ``global``."""
    if outcome.planned.job.speed_only or outcome.status == "skipped":
        return []
    train = read_json(outcome.job_dir / output_file("train")) or {}
    job = outcome.planned.job
    return [
        {"model": job.model.name, "data": job.data.name, "seed": job.seed, **row, "job_key": job.key}
        for row in train.get("per_category") or []
    ]


def _write_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str], path: Path) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if is_missing(row.get(key)) else row.get(key) for key in columns})


def _grouped(rows: Sequence[dict[str, Any]], *columns: str) -> dict[Any, list[dict[str, Any]]]:
    """Rows by their value of ``columns`` (a tuple for several columns), groups in the order they first appear."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        key = tuple(row[column] for column in columns) if len(columns) > 1 else row[columns[0]]
        groups.setdefault(key, []).append(row)
    return groups


# ---------------------------------------------------------------------------------------------------- Markdown


def format_cell(value: object, digits: int = 3, missing: str = "-") -> str:
    """A Markdown table cell: a float with ``digits`` decimals, ``missing`` for an undefined value, ``|`` escaped."""
    if is_missing(value):
        return missing
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table, one line per row, without a trailing newline.

    Cells are written with ``str``: format numbers first (e.g. with :func:`format_cell`).
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _versions() -> str:
    packages = environment()["packages"]
    return ", ".join(
        f"{name} {packages[name]}" for name in ("anomalib", "torch", "openvino", "nncf", "timm") if packages[name]
    )


def _job_label(row: dict[str, Any]) -> list[object]:
    mark = " (speed only, not pretrained)" if row["mode"] != "full" else ""
    return [f"{row['model']}{mark}", row["data"], row["seed"]]


def _defined(values: Iterable[Any]) -> list[Any]:
    """The values that are not undefined (``None``, NaN: e.g. pixel metrics of a category with image labels only)."""
    return [value for value in values if not is_missing(value)]


def _sample_std(values: Sequence[float]) -> float | None:
    """Sample standard deviation; ``None`` for fewer than two values, which have no spread to estimate."""
    return statistics.stdev(values) if len(values) > 1 else None


def mean_std(values: Sequence[float | None], signed: bool = False) -> str:
    """``mean ± std`` (sample std; ``± -`` for one value) of the defined values; ``signed`` writes the mean's sign.

    Undefined values (``None``, NaN: e.g. pixel metrics of a category with image labels only) are left out.
    """
    values = _defined(values)
    if not values:
        return "-"
    spread = _sample_std(values)
    shown_spread = "-" if spread is None else f"{spread:.3f}"
    return f"{statistics.fmean(values):{'+' if signed else ''}.3f} ± {shown_spread}"


def paired_differences(values_by_seed: Mapping[int, float], baseline_by_seed: Mapping[int, float]) -> dict[int, float]:
    """``value - baseline`` seed by seed, over the seeds that both have (in the order of ``values_by_seed``).

    Pairing by seed removes what the seed moves both by (same data split, same held-out images).
    """
    return {seed: value - baseline_by_seed[seed] for seed, value in values_by_seed.items() if seed in baseline_by_seed}


def format_per_seed(values_by_seed: Mapping[int, float], digits: int = 3, seed_labels: bool = True) -> str:
    """Signed values seed by seed: ``"s0 +0.012, s1 -0.003"``, or ``"+0.012, -0.003"`` without ``seed_labels``."""
    return ", ".join(
        (f"s{seed} " if seed_labels else "") + f"{value:+.{digits}f}" for seed, value in values_by_seed.items()
    )


def seed_tables(
    values: Mapping[str, Mapping[int, Mapping[str, float | None]]],
    columns: Sequence[str],
    baseline: str,
    per_seed_column: str,
    label: str = "row",
) -> tuple[str, str]:
    """The two tables of a multi-seed comparison, as Markdown.

    Args:
        values: ``{row: {seed: {column: value}}}``; a row may lack seeds (its cells use the seeds it has).
        columns: The columns to summarise, in order.
        baseline: The row every other row is compared with, seed by seed.
        per_seed_column: The column whose paired differences are also listed seed by seed.
        label: Header of the row-name column.

    Returns:
        ``mean ± std`` over seeds of every row and column (with the number of seeds), and every other row's paired
        difference to ``baseline`` (``mean ± std`` over the seeds both have, and ``per_seed_column`` seed by seed).
    """
    rows = [baseline, *(row for row in values if row != baseline)]
    summary = [
        [row, len(values[row]), *(mean_std([seed[column] for seed in values[row].values()]) for column in columns)]
        for row in rows
    ]
    paired = []
    for row in rows[1:]:
        differences = {
            column: paired_differences(
                {seed: by_column[column] for seed, by_column in values[row].items()},
                {seed: by_column[column] for seed, by_column in values[baseline].items()},
            )
            for column in columns
        }
        cells = [mean_std(list(differences[column].values()), signed=True) for column in columns]
        paired.append([row, len(differences[per_seed_column]), *cells, format_per_seed(differences[per_seed_column])])
    return (
        markdown_table([label, "n", *columns], summary),
        markdown_table([label, "seeds", *columns, f"per seed ({per_seed_column})"], paired),
    )


def _markdown(
    config: BenchmarkConfig,
    rows: Sequence[dict[str, Any]],
    category_rows: Sequence[dict[str, Any]],
    figures: Sequence[Path],
) -> str:
    inference = config.inference
    hints = ", ".join(f"{RUNTIME_LABELS[r]} `{h}`" for r, h in inference.precision_hints.items())
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmark results",
        "",
        f"Configuration `{config.path}`, written {stamp} on {platform.node()} ({cpu_name()}, "
        f"{available_cpus()} CPUs available); {_versions()}.",
        "",
        f"Quality: test-set metrics from raw model scores, mean over the datamodule's categories "
        f"(`PerCategoryMetrics`). Inference on the CPU at {config.image_size} x {config.image_size} px with "
        f"{inference.threads or available_cpus()} threads, synchronous calls (OpenVINO: `PERFORMANCE_HINT=LATENCY`, "
        f"one stream): batch-1 latency is the median of {inference.iterations} calls after {inference.warmup} "
        f"warm-up calls, throughput is measured at batch {inference.batch_size}; each runtime runs in its own "
        "process, whose peak resident "
        f"memory is reported. OpenVINO precision hints: {hints}. INT8: post-training quantization calibrated on "
        f"`{inference.int8_calibration}` ({inference.int8_calibration_images} images).",
        "",
    ]
    full = [row for row in rows if row["mode"] == "full" and not is_missing(row["image_AUROC"])]
    if full:
        lines += ["## Quality", ""]
        header = ["model", "data", "seed", "weights", "image AUROC", "pixel AUROC", "pixel AUPRO", "image F1Max"]
        body = [[*_job_label(r), r["weights"], *(format_cell(r[m]) for m in QUALITY_METRICS)] for r in full]
        lines += [markdown_table(header, body), ""]
        if len(config.seeds) > 1:
            lines += [f"Mean ± standard deviation over the seeds {list(config.seeds)}:", ""]
            body = [
                [model, data, len(group)] + [mean_std([r[m] for r in group]) for m in QUALITY_METRICS]
                for (model, data), group in _grouped(full, "model", "data").items()
            ]
            header = ["model", "data", "seeds", "image AUROC", "pixel AUROC", "pixel AUPRO", "F1Max"]
            lines += [markdown_table(header, body), ""]
    measured = [row for row in rows if not is_missing(row["fit_s"])]
    if measured:
        lines += ["## Training", ""]
        header = ["model", "data", "seed", "epochs", "fit (s)", "train images/s", "train peak RSS (MiB)", "params (M)"]
        body = [
            [
                *_job_label(r),
                format_cell(r["epochs"]),
                format_cell(r["fit_s"], 0),
                format_cell(r["train_images_per_s"], 1),
                format_cell(r["train_peak_rss_mb"], 0),
                format_cell(None if is_missing(r["params"]) else r["params"] / 1e6, 2),
            ]
            for r in measured
        ]
        lines += [markdown_table(header, body), ""]
        runtimes = config.inference.runtimes
        for measure, title, digits in (
            ("latency_ms", "Latency at batch 1 (ms, median)", 1),
            ("throughput_ips", f"Throughput at batch {inference.batch_size} (images/s)", 1),
            ("peak_rss_mb", "Inference peak RSS (MiB, whole process)", 0),
            ("size_mb", "Model size on disk (MiB)", 1),
        ):
            with_values = [r for r in measured if any(not is_missing(r[f"{rt}_{measure}"]) for rt in runtimes)]
            if not with_values:
                continue
            lines += [f"## {title}", ""]
            header = ["model", "data", "seed", *(RUNTIME_LABELS[runtime] for runtime in runtimes)]
            body = [
                [*_job_label(r), *(format_cell(r[f"{rt}_{measure}"], digits) for rt in runtimes)] for r in with_values
            ]
            lines += [markdown_table(header, body), ""]
    multi = [row for row in category_rows if row["category"] not in {"mean", "global"}]
    keys_with_many = {key for key in {r["job_key"] for r in multi} if sum(r["job_key"] == key for r in multi) > 1}
    if keys_with_many:
        lines += ["## Per category (one model for several categories)", ""]
        header = ["model", "data", "seed", "category", "image AUROC", "pixel AUROC", "pixel AUPRO", "image F1Max"]
        body = [
            [r["model"], r["data"], r["seed"], r["category"], *(format_cell(r[m]) for m in QUALITY_METRICS)]
            for r in category_rows
            if r["job_key"] in keys_with_many
        ]
        lines += [markdown_table(header, body), ""]
    others = [row for row in rows if row["status"] in {"skipped", "failed", "pending"}]
    if others:
        lines += ["## Jobs without complete results", ""]
        body = [[*_job_label(r), r["status"], format_cell(r["message"])] for r in others]
        lines += [markdown_table(["model", "data", "seed", "status", "reason"], body), ""]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{figure.stem}]({figure.name})" for figure in figures]
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- figures


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    # A bare Figure renders with the Agg canvas: no pyplot state, no display needed.
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _model_colors(models: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return {model: palette(index % 10) for index, model in enumerate(models)}


def column_mean(rows: Sequence[Mapping[str, Any]], column: str) -> float:
    """Mean of a column's defined values (pixel metrics are undefined without masks); NaN when there is none."""
    values = _defined(row[column] for row in rows)
    return statistics.mean(values) if values else math.nan


def _metric_bars(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    full = [row for row in rows if row["mode"] == "full" and not is_missing(row["image_AUROC"])]
    if not full:
        return None
    by_data = _grouped(full, "data")
    models = list(dict.fromkeys(row["model"] for row in full))
    colors = _model_colors(models)
    figure = _new_figure(max(6.0, 1.6 * len(QUALITY_METRICS) * max(1, len(models)) / 2), 3.4 * len(by_data))
    axes = figure.subplots(len(by_data), 1, squeeze=False)[:, 0]
    width = 0.8 / len(models)
    for axis, (data, data_rows) in zip(axes, by_data.items(), strict=True):
        for model_index, model in enumerate(models):
            group = [row for row in data_rows if row["model"] == model]
            means = [column_mean(group, metric) for metric in QUALITY_METRICS]
            errors = [_sample_std(_defined(row[metric] for row in group)) or 0.0 for metric in QUALITY_METRICS]
            positions = np.arange(len(QUALITY_METRICS)) + (model_index - (len(models) - 1) / 2) * width
            spread = errors if any(errors) else None
            bars = axis.bar(positions, means, width, yerr=spread, label=model, color=colors[model], capsize=3)
            axis.bar_label(bars, labels=["" if math.isnan(v) else f"{v:.3f}" for v in means], fontsize=7, padding=2)
        axis.set_xticks(np.arange(len(QUALITY_METRICS)), [m.replace("_", " ") for m in QUALITY_METRICS])
        axis.set_ylim(0, 1.08)
        axis.set_ylabel("score (higher is better)")
        seeds = sorted({row["seed"] for row in data_rows})
        over = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean and std over seeds {seeds}"
        axis.set_title(f"{data}: test metrics per model ({over})")
        axis.grid(axis="y", alpha=0.3)
        axis.legend(loc="lower right", fontsize=8)
    figure.savefig(path)
    return path


_RUNTIME_MARKERS = {"torch": "o", "openvino_fp32": "s", "openvino_fp16": "^", "openvino_int8": "D"}


def _latency_vs_accuracy(rows: Sequence[dict[str, Any]], runtimes: Sequence[str], path: Path) -> Path | None:
    measured = [row for row in rows if any(not is_missing(row[f"{rt}_latency_ms"]) for rt in runtimes)]
    full = [row for row in measured if row["mode"] == "full" and not is_missing(row["image_AUROC"])]
    if not full:
        return None
    models = list(dict.fromkeys(row["model"] for row in measured))
    colors = _model_colors(models)
    by_data = _grouped(full, "data")
    figure = _new_figure(7.5, 4.2 * len(by_data))
    axes = figure.subplots(len(by_data), 1, squeeze=False)[:, 0]
    for axis, (data, data_rows) in zip(axes, by_data.items(), strict=True):
        for model in models:
            group = [row for row in data_rows if row["model"] == model]
            if not group:
                continue
            accuracy = column_mean(group, "image_AUROC")
            for runtime in runtimes:
                if not math.isnan(latency := column_mean(group, f"{runtime}_latency_ms")):
                    axis.scatter(
                        latency,
                        accuracy,
                        color=colors[model],
                        marker=_RUNTIME_MARKERS[runtime],
                        s=60,
                        edgecolors="black",
                        linewidths=0.5,
                    )
        # Speed-only rows have no accuracy: a dotted line marks where their latency would sit.
        for row in (r for r in measured if r["mode"] != "full" and r["data"] == data):
            latency = next(
                (row[f"{rt}_latency_ms"] for rt in runtimes if not is_missing(row[f"{rt}_latency_ms"])), None
            )
            if latency is not None:
                axis.axvline(latency, color=colors[row["model"]], linestyle=":", linewidth=1.2)
                axis.annotate(
                    f"{row['model']}: speed only, not pretrained",
                    (latency, 0.02),
                    xycoords=("data", "axes fraction"),
                    rotation=90,
                    fontsize=7,
                    color=colors[row["model"]],
                    va="bottom",
                    ha="right",
                )
        axis.set_xscale("log")
        axis.set_xlabel("latency at batch 1 (ms, log scale; left is faster)")
        axis.set_ylabel("image AUROC (PyTorch model)")
        axis.set_title(f"{data}: accuracy against CPU latency (up and left is better)")
        axis.grid(alpha=0.3, which="both")
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=colors[m], marker="o", linestyle="", label=m) for m in models]
        handles += [
            Line2D([], [], color="gray", marker=_RUNTIME_MARKERS[rt], linestyle="", label=RUNTIME_LABELS[rt])
            for rt in runtimes
        ]
        axis.legend(handles=handles, fontsize=7, loc="best")
    figure.savefig(path)
    return path


def _latency_bars(rows: Sequence[dict[str, Any]], runtimes: Sequence[str], batch_size: int, path: Path) -> Path | None:
    measured = [row for row in rows if any(not is_missing(row[f"{rt}_latency_ms"]) for rt in runtimes)]
    if not measured:
        return None
    by_model = _grouped(measured, "model")
    labels = [f"{model}{' (speed only)' if group[0]['mode'] != 'full' else ''}" for model, group in by_model.items()]
    figure = _new_figure(11, 0.6 * len(by_model) * len(runtimes) / 2 + 2.5)
    axes = figure.subplots(1, 2)
    height = 0.8 / len(runtimes)
    for axis, measure, title in (
        (axes[0], "latency_ms", "latency at batch 1 (ms, log scale, lower is better)"),
        (axes[1], "throughput_ips", f"throughput at batch {batch_size} (images/s, log scale, higher is better)"),
    ):
        for runtime_index, runtime in enumerate(runtimes):
            values = [column_mean(group, f"{runtime}_{measure}") for group in by_model.values()]
            positions = np.arange(len(by_model)) + (runtime_index - (len(runtimes) - 1) / 2) * height
            bars = axis.barh(positions, values, height, label=RUNTIME_LABELS[runtime])
            axis.bar_label(bars, labels=["" if math.isnan(v) else f"{v:.1f}" for v in values], fontsize=7, padding=2)
        axis.set_xscale("log")  # PyTorch and INT8 OpenVINO can be orders of magnitude apart
        axis.set_yticks(np.arange(len(by_model)), labels, fontsize=8)
        axis.invert_yaxis()
        axis.set_title(title, fontsize=10)
        axis.grid(axis="x", alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    figure.suptitle("CPU inference speed per model and runtime (mean over jobs)")
    figure.savefig(path)
    return path


def write_report(config: BenchmarkConfig, outcomes: Sequence["JobOutcome"]) -> list[Path]:
    """Write ``results.csv``, ``per_category.csv``, ``results.md`` and the figures into the output folder.

    Args:
        config: The configuration.
        outcomes: Every planned job's outcome.

    Returns:
        The written files.
    """
    output = config.output
    output.mkdir(parents=True, exist_ok=True)
    rows = [job_row(outcome, config) for outcome in outcomes]
    category_rows = [row for outcome in outcomes for row in per_category_rows(outcome)]
    _write_csv(rows, RESULT_COLUMNS, output / "results.csv")
    _write_csv(category_rows, PER_CATEGORY_COLUMNS, output / "per_category.csv")
    runtimes = config.inference.runtimes
    figures = [
        _metric_bars(rows, output / "metrics.png"),
        _latency_vs_accuracy(rows, runtimes, output / "latency_vs_accuracy.png"),
        _latency_bars(rows, runtimes, config.inference.batch_size, output / "latency.png"),
    ]
    written = [figure for figure in figures if figure is not None]
    markdown = output / "results.md"
    markdown.write_text(_markdown(config, rows, category_rows, written))
    return [output / "results.csv", output / "per_category.csv", markdown, *written]
