# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

r"""Dcam deployment benchmark: every OpenVINO precision against eager FP32 PyTorch, on the test set of an MVTec root.

For one trained Dcam checkpoint and the test images of the given categories, the script

1. exports the OpenVINO IRs (one conversion, then FP32, FP16, INT8 weights-only, INT8_PTQ with each calibration
   source, INT8_ACQ), and takes QAT IRs if given (``--qat-ir student=<xml> all=<xml>``, from
   ``anomalib-dcam qat``);
2. scores every test image with each precision, each in a fresh subprocess, so that peak memory (the process's RSS
   high-water mark) is measured fairly; predictions are written to disk first;
3. measures batch-1 latency (synchronous inference) and throughput on the CPU: OpenVINO through an
   ``AsyncInferQueue`` with its optimal number of requests, compiled with the stated ``INFERENCE_PRECISION_HINT``
   (default ``f32``); eager PyTorch in batches of ``--torch-batch-size`` (default 32);
4. computes image AUROC, pixel AUROC and AUPRO (anomalib's, FPR limit 0.3) per category, and the drop against eager
   FP32 PyTorch, from the saved predictions, and writes ``results.csv`` and ``results.md``.

Finished steps are skipped when the script is run again with the same ``--output``: delete a precision's folders
under ``ir/`` and ``runs/`` to redo it.

Calibration uses the training normals of the categories (INT8_ACQ: its validation set is a synthetic-anomaly split
of the training normals, so no test image is seen during quantization).

``--speed-only`` replaces the checkpoint by Dcam's default configuration (ResNet18 teacher and student) with random
weights: the same exports and timings, on the same images, with no quality columns (random weights say nothing about
quality).

Example:
    python benchmarks/deployment.py --ckpt_path results/Dcam/MVTecAD/bottle/latest/weights/lightning/model.ckpt \
        --root ../shared/data/industrial --categories bottle --output results/deployment/bottle
    python benchmarks/deployment.py --speed-only --root ../shared/data/industrial --categories bottle \
        --precisions torch_fp32 ov_fp32 ov_fp16 ov_int8_ptq_normals --output results/deployment/resnet18_speed_only
"""

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import openvino as ov

    from anomalib_dcam import Dcam

EAGER = "torch_fp32"
# name -> (compression type, calibration source); the eager reference and the external QAT IRs are not exported here.
EXPORTS: dict[str, tuple[str, str | None]] = {
    "ov_fp32": ("FP32", None),
    "ov_fp16": ("FP16", None),
    "ov_int8_weights": ("INT8", None),
    "ov_int8_ptq_normals": ("INT8_PTQ", "normals"),
    "ov_int8_ptq_random_normal": ("INT8_PTQ", "random_normal"),
    "ov_int8_ptq_synthetic": ("INT8_PTQ", "synthetic_anomalies"),
    "ov_int8_acq": ("INT8_ACQ", "normals"),
}
QAT = "ov_int8_qat"  # prefix: ``ov_int8_qat_<label>`` for ``--qat-ir <label>=<xml>``
ALL_PRECISIONS = [EAGER, *EXPORTS]
METRICS = ("image_AUROC", "pixel_AUROC", "AUPRO")


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------------------


def _proc_status_mb(field: str) -> float | None:
    """A memory field of ``/proc/self/status`` in MiB (Linux), else ``None``."""
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return None


def current_rss_mb() -> float:
    """Current resident set size in MiB."""
    return _proc_status_mb("VmRSS") or peak_rss_mb()


def peak_rss_mb() -> float:
    """High-water mark of this process's resident set size in MiB (since the last :func:`reset_peak_rss`)."""
    from anomalib_dcam.benchmark.worker import peak_rss_mb as package_peak_rss_mb  # imported after the HF settings

    return package_peak_rss_mb()


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark to the current RSS (Linux ``clear_refs``); ``False`` where that is impossible.

    Importing PyTorch, anomalib and OpenVINO peaks higher than many models need; without the reset that transient
    peak would be reported for every precision alike.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def write_json(path: Path, data: object) -> None:
    """Write JSON atomically, so that an interrupted run never leaves a half-written result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=2))
    temporary.replace(path)


def ir_path(output: Path, name: str, qat_irs: dict[str, Path] | None = None) -> Path:
    """Where the IR of a precision lives (QAT IRs: where ``--qat-ir`` points)."""
    if name.startswith(QAT):
        if not qat_irs or name not in qat_irs:
            msg = f"precision {name} needs --qat-ir {name.removeprefix(QAT + '_') or 'LABEL'}=<model.xml>"
            raise ValueError(msg)
        return qat_irs[name]
    return output / "ir" / name / "weights" / "openvino" / "model.xml"


def parse_qat_irs(values: list[str]) -> dict[str, Path]:
    """``["student=a.xml", "all=b.xml"]`` -> ``{"ov_int8_qat_student": a.xml, ...}``; a bare path: ``ov_int8_qat``."""
    irs = {}
    for value in values:
        label, separator, path = value.rpartition("=")
        if not separator:
            label = "qat"
        name = f"{QAT}_{label}" if label != "qat" else QAT
        if not Path(path).is_file():
            msg = f"--qat-ir {value!r}: {path!r} is not a file; pass LABEL=<model.xml> from `anomalib-dcam qat`."
            raise FileNotFoundError(msg)
        irs[name] = Path(path)
    return irs


def load_model(args: argparse.Namespace) -> "Dcam":
    """The checkpoint's Dcam, or with ``--speed-only`` Dcam's default configuration with seeded random weights."""
    import torch

    from anomalib_dcam import Dcam

    if args.speed_only:
        torch.manual_seed(0)  # every stage subprocess builds the same random network
        model = Dcam().eval()  # teacher weights are only loaded when fitting: these stay random
        # An untrained post-processor holds NaN statistics, which OpenVINO rejects (a Clamp with NaN bounds); any
        # finite values give the same graph, hence the same timings, as a trained model's.
        post_processor = model.post_processor
        for name, value in {"image_min": 0.0, "image_max": 1.0, "pixel_min": 0.0, "pixel_max": 1.0}.items():
            getattr(post_processor, name).fill_(value)
        post_processor._image_threshold.fill_(0.5)  # no public setter in anomalib 2.7
        post_processor._pixel_threshold.fill_(0.5)
        return model
    return Dcam.load_from_checkpoint(args.ckpt_path, map_location="cpu").eval()


def prepare_test_data(args: argparse.Namespace) -> None:
    """Write the test images, resized to the export size, and their ground truth (``test_images.npy``, ``.npz``).

    Every precision then reads the same arrays, and the OpenVINO processes need neither PyTorch nor anomalib.
    """
    import numpy as np
    from torchvision.transforms.v2 import Resize

    from anomalib_dcam.data import MultiClassMVTec

    images_path, truth_path = args.output / "test_images.npy", args.output / "ground_truth.npz"
    if images_path.is_file() and truth_path.is_file():
        return
    # Only the test set is read: no validation split, so no synthetic validation images are generated.
    datamodule = MultiClassMVTec(root=args.root, categories=args.categories, num_workers=0, val_split_mode="none")
    datamodule.setup()
    dataset = datamodule.test_data
    # The resize anomalib's data pipeline applies for the model (antialiased bilinear); masks use nearest.
    dataset.augmentations = Resize(tuple(args.input_size), antialias=True)
    items = [dataset[index] for index in range(len(dataset))]
    args.output.mkdir(parents=True, exist_ok=True)
    np.savez(
        truth_path.with_suffix(".tmp.npz"),
        gt_label=np.array([int(item.gt_label) for item in items]),
        gt_mask=np.stack([item.gt_mask.numpy().astype(np.uint8) for item in items]),
        category=np.array(list(dataset.samples.category)),
        image_path=np.array([str(item.image_path) for item in items]),
    )
    np.save(images_path.with_suffix(".tmp.npy"), np.stack([item.image.numpy().astype(np.float32) for item in items]))
    truth_path.with_suffix(".tmp.npz").replace(truth_path)
    images_path.with_suffix(".tmp.npy").replace(images_path)


# ---------------------------------------------------------------------------------------------------------------
# Stage 1: export (one subprocess; one ONNX conversion for every precision)
# ---------------------------------------------------------------------------------------------------------------


def stage_export(args: argparse.Namespace) -> None:
    """Export every requested IR that does not exist yet."""
    import torch

    from anomalib_dcam.data import MultiClassMVTec
    from anomalib_dcam.deploy import (
        build_calibration_datamodule,
        compress_openvino_model,
        convert_to_openvino,
        save_openvino,
    )

    prepare_test_data(args)
    torch.set_num_threads(args.num_threads or torch.get_num_threads())
    missing = [name for name in args.precisions if name in EXPORTS and not ir_path(args.output, name, None).is_file()]
    if not missing:
        return
    model = load_model(args)
    start = time.perf_counter()
    base = convert_to_openvino(model, tuple(args.input_size))
    conversion_seconds = time.perf_counter() - start
    for name in missing:
        compression, source = EXPORTS[name]
        datamodule = None
        if source is not None:
            # INT8_ACQ validates on synthetic anomalies of held-out training normals: the test set stays unseen. The
            # other sources calibrate on the same training images without generating a validation set they never use.
            split = {"val_split_mode": "synthetic" if compression == "INT8_ACQ" else "from_train"}
            data = MultiClassMVTec(
                root=args.root, categories=args.categories, num_workers=0, eval_batch_size=8, **split
            )
            datamodule = build_calibration_datamodule(source, data, num_images=args.num_calibration_images)
        print(f"[export] {name}", flush=True)
        start = time.perf_counter()
        compressed = compress_openvino_model(
            base.clone(),
            None if compression == "FP32" else compression,
            datamodule=datamodule,
            metric=args.acq_metric,
            max_drop=args.acq_max_drop,
            pre_processor=model.pre_processor,
        )
        xml = save_openvino(compressed, args.output / "ir" / name, compression_type=compression)
        write_json(
            xml.parent / "export.json",
            {
                "precision": name,
                "compression_type": compression,
                "calibration_source": source,
                "num_calibration_images": args.num_calibration_images if source else None,
                "acq_metric": args.acq_metric if compression == "INT8_ACQ" else None,
                "acq_max_drop": args.acq_max_drop if compression == "INT8_ACQ" else None,
                "onnx_conversion_seconds": round(conversion_seconds, 1),
                "compression_seconds": round(time.perf_counter() - start, 1),
            },
        )


# ---------------------------------------------------------------------------------------------------------------
# Stage 2: measure (one fresh subprocess per precision)
# ---------------------------------------------------------------------------------------------------------------


def _latency_stats(seconds: list[float]) -> dict[str, float]:
    import numpy as np

    milliseconds = np.array(seconds) * 1000.0
    return {
        "latency_ms_median": float(np.median(milliseconds)),
        "latency_ms_p90": float(np.percentile(milliseconds, 90)),
        "latency_ms_mean": float(milliseconds.mean()),
    }


def _time_calls(function: "Callable[[int], object]", warmup: int, iterations: int) -> list[float]:
    for index in range(warmup):
        function(index)
    seconds = []
    for index in range(iterations):
        start = time.perf_counter()
        function(index)
        seconds.append(time.perf_counter() - start)
    return seconds


def _stack_predictions(scores: list[float], labels: list[bool], maps: list["np.ndarray"]) -> dict[str, "np.ndarray"]:
    import numpy as np

    return {
        "pred_score": np.array(scores, dtype=np.float32),
        "pred_label": np.array(labels, dtype=bool),
        "anomaly_map": np.stack(maps) if maps else np.zeros((0, 1, 1), dtype=np.float32),
    }


def _openvino_scoring_and_latency(
    args: argparse.Namespace,
    core: "ov.Core",
    xml: Path,
    images: "np.ndarray",
) -> tuple[dict, dict]:
    """Score every test image and time batch-1 synchronous inference (``PERFORMANCE_HINT=LATENCY``)."""
    import numpy as np

    from anomalib_dcam.deploy.inference import openvino_config

    compiled = core.compile_model(str(xml), "CPU", openvino_config(args.precision_hint, "LATENCY", args.num_threads))
    request = compiled.create_infer_request()
    scores, labels, maps = [], [], []
    for image in [] if args.speed_only else images:
        outputs = {port.get_any_name(): value for port, value in request.infer({0: image[None]}).items()}
        scores.append(float(np.asarray(outputs["pred_score"]).ravel()[0]))
        labels.append(bool(np.asarray(outputs.get("pred_label", [False])).ravel()[0]))
        anomaly_map = np.asarray(outputs["anomaly_map"])
        maps.append(anomaly_map.reshape(anomaly_map.shape[-2:]).astype(np.float32))
    predictions = _stack_predictions(scores, labels, maps)
    timing_images = [np.ascontiguousarray(images[index][None]) for index in range(min(len(images), 16))]
    seconds = _time_calls(
        lambda index: request.infer({0: timing_images[index % len(timing_images)]}),
        args.warmup,
        args.latency_iterations,
    )
    return predictions, {**_latency_stats(seconds), "peak_rss_mb": peak_rss_mb()}


def _openvino_throughput(args: argparse.Namespace, core: "ov.Core", xml: Path, images: "np.ndarray") -> dict:
    """Images per second through an ``AsyncInferQueue`` (``PERFORMANCE_HINT=THROUGHPUT``)."""
    import numpy as np
    import openvino as ov

    from anomalib_dcam.deploy.inference import openvino_config

    compiled = core.compile_model(
        str(xml),
        "CPU",
        openvino_config(args.precision_hint, "THROUGHPUT", args.num_threads),
    )
    num_requests = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    queue = ov.AsyncInferQueue(compiled, num_requests)
    timing_images = [np.ascontiguousarray(images[index][None]) for index in range(min(len(images), 16))]
    for index in range(num_requests):  # warm-up: one inference per request
        queue.start_async({0: timing_images[index % len(timing_images)]})
    queue.wait_all()
    start = time.perf_counter()
    for index in range(args.throughput_images):
        queue.start_async({0: timing_images[index % len(timing_images)]})
    queue.wait_all()
    return {
        "throughput_images_per_s": args.throughput_images / (time.perf_counter() - start),
        "throughput_requests": int(num_requests),
        "peak_rss_throughput_mb": peak_rss_mb(),
    }


def _measure_openvino(args: argparse.Namespace, name: str, images: "np.ndarray") -> tuple[dict, dict]:
    """Score, time and measure one IR; this process imports NumPy and OpenVINO only."""
    import gc

    import openvino as ov

    xml = ir_path(args.output, name, args.qat_irs)
    core = ov.Core()
    baseline = current_rss_mb()
    reset = reset_peak_rss()
    predictions, measurement = _openvino_scoring_and_latency(args, core, xml, images)
    gc.collect()  # the latency-compiled model is gone: measure the throughput configuration on its own
    reset_peak_rss()
    measurement |= _openvino_throughput(args, core, xml, images)
    measurement |= {
        "rss_baseline_mb": baseline,
        "peak_rss_reset": reset,
        "ir_size_mb": (xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 2**20,
    }
    return predictions, measurement


def _measure_torch(args: argparse.Namespace, images: "np.ndarray") -> tuple[dict, dict]:
    """Score, time and measure the checkpoint in eager PyTorch (the reference)."""
    import torch

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    baseline = current_rss_mb()
    reset = reset_peak_rss()
    model = load_model(args)
    scores, labels, maps = [], [], []
    with torch.inference_mode():
        for image in [] if args.speed_only else images:
            output = model(torch.from_numpy(image[None]))
            scores.append(float(output.pred_score.reshape(-1)[0]))
            labels.append(bool(output.pred_label.reshape(-1)[0]) if output.pred_label is not None else False)
            maps.append(output.anomaly_map.reshape(output.anomaly_map.shape[-2:]).float().numpy())
        predictions = _stack_predictions(scores, labels, maps)
        timing_images = [torch.from_numpy(images[index][None].copy()) for index in range(min(len(images), 16))]
        seconds = _time_calls(
            lambda index: model(timing_images[index % len(timing_images)]),
            args.warmup,
            args.latency_iterations,
        )
        peak_latency = peak_rss_mb()
        # Throughput: whole batches, as a PyTorch deployment would run them; the peak memory of batch-32 inference
        # is reported apart from the batch-1 peak.
        reset_peak_rss()
        batch = torch.from_numpy(images[: args.torch_batch_size].copy())
        batch = torch.cat([batch] * -(-args.torch_batch_size // len(batch)))[: args.torch_batch_size]
        model(batch)  # warm-up
        num_batches = max(1, round(args.throughput_images / args.torch_batch_size))
        start = time.perf_counter()
        for _ in range(num_batches):
            model(batch)
        throughput = num_batches * args.torch_batch_size / (time.perf_counter() - start)
    measurement = {
        **_latency_stats(seconds),
        "rss_baseline_mb": baseline,
        "peak_rss_mb": peak_latency,
        "peak_rss_reset": reset,
        "throughput_images_per_s": throughput,
        "throughput_batch_size": args.torch_batch_size,
        "peak_rss_throughput_mb": peak_rss_mb(),
        "ir_size_mb": None,
        "torch_threads": torch.get_num_threads(),
    }
    return predictions, measurement


def stage_measure(args: argparse.Namespace) -> None:
    """Score the test images with one precision, then measure latency, throughput and peak memory."""
    import numpy as np

    name = args.precision
    run_dir = args.output / "runs" / name
    images = np.load(args.output / "test_images.npy")
    if name == EAGER:
        predictions, measurement = _measure_torch(args, images)
    else:
        predictions, measurement = _measure_openvino(args, name, images)
    run_dir.mkdir(parents=True, exist_ok=True)
    temporary = run_dir / "predictions.tmp.npz"
    np.savez(temporary, **predictions)
    temporary.replace(run_dir / "predictions.npz")
    measurement |= {
        "precision": name,
        "precision_hint": "n/a (PyTorch FP32)" if name == EAGER else args.precision_hint,
        "num_threads": args.num_threads,
        "num_images": len(images),
        "latency_iterations": args.latency_iterations,
        "throughput_images": args.throughput_images,
        "speed_only": args.speed_only,
    }
    write_json(run_dir / "measure.json", measurement)


# ---------------------------------------------------------------------------------------------------------------
# Stage 3: metrics and report (in the calling process, from the saved predictions)
# ---------------------------------------------------------------------------------------------------------------


def compute_metrics(predictions: dict, ground_truth: dict, selection: "np.ndarray") -> dict[str, float]:
    """Image AUROC, pixel AUROC and AUPRO (FPR limit 0.3) of the selected images, with anomalib's metrics."""
    import numpy as np
    import torch
    from anomalib.data import ImageBatch
    from anomalib.metrics import AUPRO, AUROC

    metrics = {
        "image_AUROC": AUROC(fields=["pred_score", "gt_label"]),
        "pixel_AUROC": AUROC(fields=["anomaly_map", "gt_mask"]),
        "AUPRO": AUPRO(fields=["anomaly_map", "gt_mask"], fpr_limit=0.3),
    }
    indices = np.flatnonzero(selection)
    for chunk in np.array_split(indices, max(1, len(indices) // 16)):
        batch = ImageBatch(
            image=torch.zeros(len(chunk), 3, 1, 1),  # the metrics read scores, maps and ground truth only
            gt_label=torch.from_numpy(ground_truth["gt_label"][chunk]).bool(),
            gt_mask=torch.from_numpy(ground_truth["gt_mask"][chunk]).bool(),
            pred_score=torch.from_numpy(predictions["pred_score"][chunk]).float(),
            anomaly_map=torch.from_numpy(predictions["anomaly_map"][chunk]).float(),
        )
        for metric in metrics.values():
            metric.update(batch)
    return {name: float(metric.compute()) for name, metric in metrics.items()}


def report(args: argparse.Namespace, precisions: list[str]) -> list[dict]:
    """Metrics of every measured precision per category, with the drop against eager FP32 PyTorch."""
    import numpy as np

    ground_truth = dict(np.load(args.output / "ground_truth.npz"))
    groups = {category: ground_truth["category"] == category for category in args.categories}
    if len(args.categories) > 1:
        groups["all"] = np.ones(len(ground_truth["gt_label"]), dtype=bool)
    rows, reference = [], {}
    for name in precisions:
        run_dir = args.output / "runs" / name
        metrics_path = run_dir / "metrics.json"
        if args.speed_only:  # random weights: no quality is measured, let alone reported
            write_json(metrics_path, {group: dict.fromkeys(METRICS) for group in groups})
        elif not metrics_path.is_file():
            predictions = dict(np.load(run_dir / "predictions.npz"))
            write_json(
                metrics_path,
                {group: compute_metrics(predictions, ground_truth, mask) for group, mask in groups.items()},
            )
        metrics = json.loads(metrics_path.read_text())
        measurement = json.loads((run_dir / "measure.json").read_text())
        export_path = ir_path(args.output, name, args.qat_irs).parent / "export.json" if name != EAGER else None
        export = json.loads(export_path.read_text()) if export_path is not None and export_path.is_file() else {}
        for group in groups:
            if name == EAGER:
                reference[group] = metrics[group]
            row = {"precision": name, "category": group, **metrics[group]}
            for metric in METRICS:
                base = reference.get(group, {}).get(metric)
                value = metrics[group][metric]
                row[f"{metric}_drop"] = None if base is None or value is None else base - value
            row |= {
                key: measurement.get(key)
                for key in (
                    "latency_ms_median",
                    "latency_ms_p90",
                    "throughput_images_per_s",
                    "throughput_batch_size",
                    "peak_rss_mb",
                    "rss_baseline_mb",
                    "ir_size_mb",
                    "precision_hint",
                    "num_threads",
                )
            }
            row["calibration_source"] = export.get("calibration_source")
            row["speed_only"] = args.speed_only
            rows.append(row)
    return rows


def _format(value: object, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_reports(args: argparse.Namespace, rows: list[dict]) -> None:
    """Write ``results.csv`` and ``results.md``."""
    import csv

    import openvino as ov
    import torch

    from anomalib_dcam.benchmark.worker import cpu_name

    with (args.output / "results.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    model = (
        "Dcam's default configuration (ResNet18), random weights: speed only, not pretrained, no quality columns"
        if args.speed_only
        else f"checkpoint `{args.ckpt_path}`"
    )
    lines = [
        "# Dcam deployment benchmark",
        "",
        f"- {model}; test images: {', '.join(args.categories)}; input {args.input_size[0]} x {args.input_size[1]}",
        f"- CPU: {cpu_name()} ({os.cpu_count()} logical cores); OpenVINO {ov.__version__}; PyTorch {torch.__version__}",
        f"- OpenVINO CPU plugin with `INFERENCE_PRECISION_HINT={args.precision_hint}`; threads: "
        f"{args.num_threads or 'default'}; latency: batch 1, synchronous, median (p90) of {args.latency_iterations} "
        f"runs; throughput: {args.throughput_images} images, OpenVINO through AsyncInferQueue (batch 1 requests), "
        f"eager PyTorch in batches of {args.torch_batch_size}",
        "- drop = eager FP32 PyTorch minus the precision (positive: worse); AUPRO with FPR limit 0.3",
        f"- INT8 calibration: {args.num_calibration_images} training normals (or generated images) per source; "
        "INT8_ACQ validates on synthetic anomalies of held-out training normals",
        "- peak RSS: high-water mark of the scoring process while it loads the model, scores the test set and runs "
        "the batch-1 latency loop (reset after imports and after loading the test images, whose RSS is the "
        "baseline); OpenVINO processes import NumPy and OpenVINO only",
        f"- {stamp}",
        "",
        "| precision | category | image AUROC (drop) | pixel AUROC (drop) | AUPRO (drop) | latency ms (p90) "
        "| throughput img/s | peak RSS MB (baseline) | IR MB | hint |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        quality = " | ".join(f"{_format(row[metric])} ({_format(row[f'{metric}_drop'])})" for metric in METRICS)
        lines.append(
            f"| {row['precision']} | {row['category']} | {quality} | {_format(row['latency_ms_median'], 1)} "
            f"({_format(row['latency_ms_p90'], 1)}) | {_format(row['throughput_images_per_s'], 1)} "
            f"| {_format(row['peak_rss_mb'], 0)} ({_format(row['rss_baseline_mb'], 0)}) "
            f"| {_format(row['ir_size_mb'], 1)} | {row['precision_hint']} |",
        )
    (args.output / "results.md").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# Orchestration
# ---------------------------------------------------------------------------------------------------------------


def _run_stage(arguments: list[str], stage: str, precision: str | None = None) -> None:
    command = [sys.executable, str(Path(__file__).resolve()), *arguments, "--stage", stage]
    if precision is not None:
        command += ["--precision", precision]
    completed = subprocess.run(command, check=False)  # this script again, with the caller's arguments
    if completed.returncode != 0:
        msg = f"stage {stage} {precision or ''} failed with exit code {completed.returncode}"
        raise RuntimeError(msg)


def default_input_size(args: argparse.Namespace) -> list[int]:
    """The export size: the model's pre-processor resize."""
    from anomalib_dcam.deploy.quantization import pre_processor_stats

    size, _, _ = pre_processor_stats(load_model(args).pre_processor)
    if size is None:
        msg = "The checkpoint's pre-processor has no Resize; pass --input-size HEIGHT WIDTH."
        raise ValueError(msg)
    return list(size)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Parse the command line; also return the arguments to pass on to the stage subprocesses."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--ckpt_path", type=Path, help="trained Dcam checkpoint")
    model.add_argument(
        "--speed-only",
        action="store_true",
        help="time Dcam's default configuration (ResNet18) with random weights instead: no quality columns",
    )
    parser.add_argument("--root", type=Path, required=True, help="MVTec-layout dataset root")
    parser.add_argument("--categories", nargs="+", required=True, help="categories under --root")
    parser.add_argument("--output", type=Path, default=Path("results/deployment"), help="output folder")
    parser.add_argument("--input-size", type=int, nargs=2, default=None, help="export size (default: checkpoint's)")
    parser.add_argument("--precisions", nargs="+", default=None, help=f"of {ALL_PRECISIONS} (default: all)")
    parser.add_argument(
        "--qat-ir",
        nargs="+",
        default=[],
        metavar="LABEL=XML",
        help="QAT INT8 IRs to include, measured as ov_int8_qat_<LABEL> (e.g. student=results/qat/student/weights/"
        "openvino/model.xml)",
    )
    parser.add_argument("--precision-hint", default="f32", choices=["f32", "bf16", "f16", "default"])
    parser.add_argument("--num-threads", type=int, default=None, help="inference threads (default: all cores)")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up inferences before timing")
    parser.add_argument("--latency-iterations", type=int, default=200, help="timed batch-1 inferences")
    parser.add_argument("--throughput-images", type=int, default=400, help="images timed for throughput")
    parser.add_argument("--torch-batch-size", type=int, default=32, help="eager PyTorch throughput batch size")
    parser.add_argument("--num-calibration-images", type=int, default=300, help="INT8 calibration images")
    parser.add_argument("--acq-metric", default="image_AUROC", help="INT8_ACQ metric (see resolve_acq_metric)")
    parser.add_argument("--acq-max-drop", type=float, default=0.01, help="INT8_ACQ largest accepted metric drop")
    parser.add_argument("--stage", choices=["export", "measure"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default=None, help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        args.qat_irs = parse_qat_irs(args.qat_ir)
    except FileNotFoundError as error:
        parser.error(str(error))
    if args.precisions is None:
        args.precisions = list(ALL_PRECISIONS)
    args.precisions += [name for name in args.qat_irs if name not in args.precisions]  # given, hence measured
    for name in args.precisions:
        if name not in ALL_PRECISIONS and name not in args.qat_irs:
            parser.error(
                f"--precisions {name}: not one of {ALL_PRECISIONS}, nor a QAT IR given with --qat-ir "
                f"(those are measured as {QAT}_<LABEL>)",
            )
    if args.speed_only and "ov_int8_acq" in args.precisions:
        parser.error("--speed-only cannot measure ov_int8_acq: accuracy control needs a trained model")
    if EAGER not in args.precisions:
        args.precisions.insert(0, EAGER)  # every drop is measured against it
    passed_on = []
    skip_next = False
    for argument in argv:  # the stage subprocesses get the same options, minus any stage selection
        if skip_next:
            skip_next = False
            continue
        if argument in {"--stage", "--precision"}:
            skip_next = True
            continue
        passed_on.append(argument)
    return args, passed_on


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (or one of its stages, when called by itself)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args, passed_on = parse_args(argv)
    if args.input_size is None:
        args.input_size = default_input_size(args)
        passed_on += ["--input-size", *map(str, args.input_size)]
    if args.stage == "export":
        stage_export(args)
        return
    if args.stage == "measure":
        stage_measure(args)
        return

    args.output.mkdir(parents=True, exist_ok=True)
    write_json(args.output / "settings.json", {key: str(value) for key, value in vars(args).items()})
    data_ready = (args.output / "test_images.npy").is_file() and (args.output / "ground_truth.npz").is_file()
    if not data_ready or any(
        name in EXPORTS and not ir_path(args.output, name, None).is_file() for name in args.precisions
    ):
        _run_stage(passed_on, "export")
    for name in args.precisions:
        if (args.output / "runs" / name / "measure.json").is_file():
            print(f"[skip] {name}: already measured", flush=True)
            continue
        print(f"[measure] {name}", flush=True)
        _run_stage(passed_on, "measure", name)
    rows = report(args, args.precisions)
    write_reports(args, rows)
    print((args.output / "results.md").read_text())


if __name__ == "__main__":
    main()
