# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

r"""Dcam deployment benchmark: every OpenVINO precision against eager FP32 PyTorch, on the test set of an MVTec root.

For one trained Dcam checkpoint and the test images of the given categories: export the IRs (one conversion, then
FP32, FP16, INT8 weights-only, INT8_PTQ with each calibration source, INT8_ACQ; QAT IRs with ``--qat-ir``), score
every test image with each precision in a fresh subprocess (so that peak memory is each precision's own), time it
with :mod:`anomalib_dcam.benchmark.timing` (the timing of ``anomalib-dcam benchmark``), and compute image AUROC, pixel
AUROC and AUPRO per category with the drop against eager FP32 PyTorch. Writes ``results.csv``, ``results.md`` and
``record.json`` (:mod:`anomalib_dcam.benchmark.records`: the settings below, provenance and the rows). Finished exports
and measurements are reused only under the same settings (``settings.json``: the checkpoint's SHA-256, data, export
and measuring options, package versions); an output folder of other settings is refused, naming the differences.
docs/deployment.md describes every column and setting.

Example:
    python benchmarks/deployment.py --ckpt_path results/Dcam/MVTecAD/bottle/latest/weights/lightning/model.ckpt \
        --root ../shared/data/industrial --categories bottle --output results/deployment/bottle
"""

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from itertools import cycle, pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomalib_dcam.benchmark import timing
from anomalib_dcam.benchmark.records import (
    environment,
    file_digest,
    jsonable,
    settings_difference,
    summarize,
    write_json,
    write_record,
)

if TYPE_CHECKING:
    import numpy as np

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
MEASURE_OPTIONS = (
    "precision_hint",
    "num_threads",
    "warmup",
    "latency_iterations",
    "throughput_images",
    "torch_batch_size",
)
TIMING_IMAGES = 16  # the latency loop cycles over this many test images


def ir_path(output: Path, name: str, qat_irs: dict[str, Path] | None = None) -> Path:
    """Where the IR of a precision lives (QAT IRs: where ``--qat-ir`` points)."""
    if name.startswith(QAT):
        return (qat_irs or {})[name]
    return output / "ir" / name / "weights" / "openvino" / "model.xml"


def parse_qat_irs(values: list[str]) -> dict[str, Path]:
    """``["student=a.xml", "all=b.xml"]`` -> ``{"ov_int8_qat_student": a.xml, ...}``; a bare path: ``ov_int8_qat``."""
    irs = {}
    for value in values:
        label, _, path = value.rpartition("=")
        if not Path(path).is_file():
            msg = f"--qat-ir {value!r}: {path!r} is not a file; pass LABEL=<model.xml> from `anomalib-dcam qat`."
            raise FileNotFoundError(msg)
        irs[f"{QAT}_{label}" if label not in {"", "qat"} else QAT] = Path(path)
    return irs


def load_model(args: argparse.Namespace) -> "Dcam":
    """The checkpoint's Dcam, or with ``--speed-only`` a Dcam of ``--dcam-options`` with seeded random weights."""
    import torch

    from anomalib_dcam import Dcam

    if not args.speed_only:
        return Dcam.load_from_checkpoint(args.ckpt_path, map_location="cpu").eval()
    torch.manual_seed(0)  # every stage subprocess builds the same random network
    model = Dcam(**args.dcam_options).eval()  # teacher weights are only loaded when fitting: these stay random
    # An untrained post-processor holds NaN statistics, which OpenVINO rejects (a Clamp with NaN bounds); any finite
    # values give the same graph, hence the same timings, as a trained model's.
    post_processor = model.post_processor
    for name in ("image_min", "pixel_min", "image_max", "pixel_max", "_image_threshold", "_pixel_threshold"):
        getattr(post_processor, name).fill_(1.0 if name.endswith("max") else 0.0 if name.endswith("min") else 0.5)
    return model


def deployment_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that decides the figures: model, test data, export and measuring settings, package versions.

    The precisions measured are not part of it: a later run may add precisions to the same folder.
    """
    if args.speed_only:
        model = {"speed_only": True, "dcam_options": args.dcam_options}
    else:
        model = {"checkpoint": str(args.ckpt_path), "sha256": file_digest(args.ckpt_path)}
    qat_irs = {name: file_digest(xml, xml.with_suffix(".bin")) for name, xml in sorted(args.qat_irs.items())}
    return {
        "model": model,
        "data": {"root": str(args.root.resolve()), "categories": args.categories, "input_size": args.input_size},
        "export": {
            "num_calibration_images": args.num_calibration_images,
            "acq_metric": args.acq_metric,
            "acq_max_drop": args.acq_max_drop,
            "qat_irs_sha256": qat_irs,
        },
        "measure": {name: getattr(args, name) for name in MEASURE_OPTIONS},
        # Saved metrics are reused only when computed the same way (undefined pixel metrics are NaN, not 0).
        "metrics": "anomalib_dcam.callbacks.compute_anomaly_metrics (FPR limit 0.3)",
        "environment": environment(),
    }


def check_reusable(output: Path, settings: dict[str, Any]) -> None:
    """Exit with the differences when ``output`` holds exports or measurements of other settings (nothing is lost)."""
    stored = output / "settings.json"
    if stored.is_file():
        differences = settings_difference(json.loads(stored.read_text()), jsonable(settings))
    else:
        made = any((output / folder).exists() for folder in ("ir", "runs"))
        differences = ["settings.json: (absent: made by an earlier version of this script)"] if made else []
    if differences:
        sys.exit(
            f"--output {output} holds exports and measurements of other settings ({summarize(differences)}). Pass "
            "another --output, or delete that folder to measure anew."
        )


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


def stage_export(args: argparse.Namespace) -> None:
    """Export every requested IR that does not exist yet (one subprocess, one ONNX conversion for all)."""
    import torch

    from anomalib_dcam.data import MultiClassMVTec
    from anomalib_dcam.deploy import (
        build_calibration_datamodule,
        compress_openvino_model,
        convert_to_openvino,
        save_openvino,
    )

    prepare_test_data(args)
    torch.set_num_threads(args.num_threads or timing.available_cpus())
    missing = [name for name in args.precisions if name in EXPORTS and not ir_path(args.output, name).is_file()]
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
            split = "synthetic" if compression == "INT8_ACQ" else "from_train"
            data = MultiClassMVTec(
                root=args.root, categories=args.categories, num_workers=0, eval_batch_size=8, val_split_mode=split
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
        acq = compression == "INT8_ACQ"
        write_json(
            xml.parent / "export.json",
            {
                "precision": name,
                "compression_type": compression,
                "calibration_source": source,
                "num_calibration_images": args.num_calibration_images if source else None,
                "acq_metric": args.acq_metric if acq else None,
                "acq_max_drop": args.acq_max_drop if acq else None,
                "onnx_conversion_seconds": round(conversion_seconds, 1),
                "compression_seconds": round(time.perf_counter() - start, 1),
            },
        )


def _predictions(outputs: list[dict[str, Any]]) -> dict[str, "np.ndarray"]:
    """Stack the per-image ``pred_score``, ``pred_label`` and ``anomaly_map`` of the scored test images."""
    import numpy as np

    maps = [np.asarray(out["anomaly_map"], np.float32) for out in outputs]
    return {
        "pred_score": np.array([float(np.ravel(out["pred_score"])[0]) for out in outputs], dtype=np.float32),
        "pred_label": np.array([bool(np.ravel(out.get("pred_label", [False]))[0]) for out in outputs], dtype=bool),
        "anomaly_map": np.stack([m.reshape(m.shape[-2:]) for m in maps]) if maps else np.zeros((0, 1, 1), np.float32),
    }


def _measure_openvino(args: argparse.Namespace, name: str, images: "np.ndarray") -> tuple[dict, dict]:
    """Score, time and measure one IR; this process imports NumPy and OpenVINO only."""
    import gc

    import numpy as np

    xml = ir_path(args.output, name, args.qat_irs)
    baseline = timing.current_rss_mb()
    reset = timing.reset_peak_rss()
    request = timing.compile_request(xml, (1, *images.shape[1:]), args.precision_hint, args.num_threads)
    outputs = []
    for image in [] if args.speed_only else images:
        # np.array copies: the request may reuse its output buffers for the next image.
        outputs.append(
            {port.get_any_name(): np.array(value) for port, value in request.infer({0: image[None]}).items()}
        )
    timing_images = cycle(np.ascontiguousarray(image[None]) for image in images[:TIMING_IMAGES])
    seconds = timing.time_calls(lambda: request.infer({0: next(timing_images)}), args.warmup, args.latency_iterations)
    measurement = {**timing.latency_stats(seconds), "peak_rss_mb": timing.peak_rss_mb()}
    request = None
    gc.collect()  # the latency-compiled model is gone: measure the throughput configuration on its own
    timing.reset_peak_rss()
    image = np.ascontiguousarray(images[:1])
    measurement |= timing.openvino_async_throughput(
        xml, image, args.precision_hint, args.num_threads, args.throughput_images
    )
    measurement |= {
        "peak_rss_throughput_mb": timing.peak_rss_mb(),
        "rss_baseline_mb": baseline,
        "peak_rss_reset": reset,
        "ir_size_mb": (xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 2**20,
    }
    return _predictions(outputs), measurement


def _measure_torch(args: argparse.Namespace, images: "np.ndarray") -> tuple[dict, dict]:
    """Score, time and measure the checkpoint in eager PyTorch (the reference)."""
    import numpy as np
    import torch

    torch.set_num_threads(args.num_threads)
    baseline = timing.current_rss_mb()
    reset = timing.reset_peak_rss()
    model = load_model(args)
    with torch.inference_mode():
        scored = [model(torch.from_numpy(image[None])) for image in ([] if args.speed_only else images)]
        outputs = [
            {"pred_score": out.pred_score.numpy(), "anomaly_map": out.anomaly_map.float().numpy()}
            | ({} if out.pred_label is None else {"pred_label": out.pred_label.numpy()})
            for out in scored
        ]
        timing_images = cycle(torch.from_numpy(image[None].copy()) for image in images[:TIMING_IMAGES])
        seconds = timing.time_calls(lambda: model(next(timing_images)), args.warmup, args.latency_iterations)
    measurement = {**timing.latency_stats(seconds), "peak_rss_mb": timing.peak_rss_mb()}
    # Throughput: whole batches, as a PyTorch deployment would run them; the peak memory of batch inference is
    # reported apart from the batch-1 peak.
    timing.reset_peak_rss()
    batch = np.resize(images, (args.torch_batch_size, *images.shape[1:]))  # the test images, repeated if too few
    batches = max(1, round(args.throughput_images / args.torch_batch_size))
    durations = timing.time_calls(timing.torch_callable(model, batch, args.num_threads), 1, batches)
    measurement |= {
        "throughput_images_per_s": batches * args.torch_batch_size / sum(durations),
        "throughput_batch_size": args.torch_batch_size,
        "peak_rss_throughput_mb": timing.peak_rss_mb(),
        "rss_baseline_mb": baseline,
        "peak_rss_reset": reset,
        "ir_size_mb": None,
        "torch_threads": torch.get_num_threads(),
    }
    return _predictions(outputs), measurement


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
    np.savez(run_dir / "predictions.tmp.npz", **predictions)
    (run_dir / "predictions.tmp.npz").replace(run_dir / "predictions.npz")
    measurement |= {
        "precision": name,
        "precision_hint": "n/a (PyTorch FP32)" if name == EAGER else args.precision_hint,
        "num_threads": args.num_threads,
        "api": "sync latency; " + ("sync batches" if name == EAGER else "async queue") + " throughput",
        "num_images": len(images),
        "latency_iterations": args.latency_iterations,
        "throughput_images": args.throughput_images,
        "speed_only": args.speed_only,
    }
    write_json(run_dir / "measure.json", measurement)


def compute_metrics(predictions: dict, ground_truth: dict, selection: "np.ndarray") -> dict[str, float]:
    """Image AUROC, pixel AUROC and AUPRO (FPR limit 0.3) of the selected images, computed as in PerCategoryMetrics."""
    import torch

    from anomalib_dcam.callbacks import compute_anomaly_metrics

    def selected(array: "np.ndarray") -> torch.Tensor:
        return torch.from_numpy(array[selection])

    metrics = compute_anomaly_metrics(
        selected(predictions["pred_score"]),
        selected(ground_truth["gt_label"]),
        selected(predictions["anomaly_map"]),
        selected(ground_truth["gt_mask"]),
        fpr_limit=0.3,
    )
    return {
        "image_AUROC": metrics["image_AUROC"],
        "pixel_AUROC": metrics["pixel_AUROC"],
        "AUPRO": metrics["pixel_AUPRO"],
    }


REPORTED = ("latency_ms", "latency_p90_ms", "throughput_images_per_s", "throughput_batch_size", "peak_rss_mb")
REPORTED += ("rss_baseline_mb", "ir_size_mb", "precision_hint", "num_threads", "api")


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
                metrics_path, {group: compute_metrics(predictions, ground_truth, g) for group, g in groups.items()}
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
                base, value = reference.get(group, {}).get(metric), metrics[group][metric]
                row[f"{metric}_drop"] = None if base is None or value is None else base - value
            row |= {key: measurement.get(key) for key in REPORTED}
            row |= {"calibration_source": export.get("calibration_source"), "speed_only": args.speed_only}
            rows.append(row)
    return rows


def write_reports(args: argparse.Namespace, rows: list[dict]) -> None:
    """Write ``results.csv`` and ``results.md``."""
    import csv

    import openvino as ov
    import torch

    # Imported here, in the parent process only: the report module imports anomalib, which the measuring
    # subprocesses must not load (their peak memory is the precision's own).
    from anomalib_dcam.benchmark.report import format_cell, markdown_table

    def cell(value: object, digits: int = 4) -> str:
        return format_cell(value, digits, missing="n/a")

    with (args.output / "results.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    model = (
        f"Dcam({', '.join(f'{k}={v!r}' for k, v in args.dcam_options.items())}) with random weights: speed only"
        if args.speed_only
        else f"checkpoint `{args.ckpt_path}`"
    )
    lines = [
        "# Dcam deployment benchmark",
        "",
        f"- {model}; test images: {', '.join(args.categories)}; input {args.input_size[0]} x {args.input_size[1]}",
        f"- CPU: {timing.cpu_name()}; OpenVINO {ov.__version__}; PyTorch {torch.__version__}",
        f"- OpenVINO CPU plugin with `INFERENCE_PRECISION_HINT={args.precision_hint}`, {args.num_threads} threads; "
        f"latency: batch 1, synchronous (`PERFORMANCE_HINT=LATENCY`), median (p90) of {args.latency_iterations} "
        f"runs; throughput: {args.throughput_images} images, OpenVINO asynchronous (`AsyncInferQueue`, batch-1 "
        f"requests, `PERFORMANCE_HINT=THROUGHPUT`), eager PyTorch synchronous in batches of {args.torch_batch_size}",
        "- drop = eager FP32 PyTorch minus the precision (positive: worse); AUPRO with FPR limit 0.3",
        f"- INT8 calibration: {args.num_calibration_images} training normals (or generated images) per source; "
        "INT8_ACQ validates on synthetic anomalies of held-out training normals",
        "- peak RSS: high-water mark of the scoring process while it loads the model, scores the test set and runs "
        "the batch-1 latency loop (reset after imports and after loading the test images, whose RSS is the "
        "baseline)",
        f"- {stamp}",
        "",
    ]
    header = ["precision", "category", "image AUROC (drop)", "pixel AUROC (drop)", "AUPRO (drop)"]
    header += ["latency ms (p90)", "throughput img/s", "peak RSS MB (baseline)", "IR MB", "hint"]
    body = [
        [
            row["precision"],
            row["category"],
            *(f"{cell(row[metric])} ({cell(row[f'{metric}_drop'])})" for metric in METRICS),
            f"{cell(row['latency_ms'], 1)} ({cell(row['latency_p90_ms'], 1)})",
            cell(row["throughput_images_per_s"], 1),
            f"{cell(row['peak_rss_mb'], 0)} ({cell(row['rss_baseline_mb'], 0)})",
            cell(row["ir_size_mb"], 1),
            row["precision_hint"],
        ]
        for row in rows
    ]
    lines.append(markdown_table(header, body))
    (args.output / "results.md").write_text("\n".join(lines) + "\n")


def _run_stage(arguments: list[str], stage: str, precision: str | None = None) -> None:
    command = [sys.executable, str(Path(__file__).resolve()), *arguments, "--stage", stage]
    command += [] if precision is None else ["--precision", precision]
    completed = subprocess.run(command, check=False)  # this script again, with the caller's arguments
    if completed.returncode != 0:
        msg = f"stage {stage} {precision or ''} failed with exit code {completed.returncode}"
        raise RuntimeError(msg)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Parse the command line; also return the arguments to pass on to the stage subprocesses."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--ckpt_path", type=Path, help="trained Dcam checkpoint")
    model.add_argument("--speed-only", action="store_true", help="time a Dcam with random weights: no quality columns")
    parser.add_argument("--dcam-options", type=json.loads, default={}, help="with --speed-only: Dcam arguments (JSON)")
    parser.add_argument("--root", type=Path, required=True, help="MVTec-layout dataset root")
    parser.add_argument("--categories", nargs="+", required=True, help="categories under --root")
    parser.add_argument("--output", type=Path, default=Path("results/deployment"), help="output folder")
    parser.add_argument("--input-size", type=int, nargs=2, default=None, help="export size (default: checkpoint's)")
    parser.add_argument("--precisions", nargs="+", default=None, help=f"of {ALL_PRECISIONS} (default: all)")
    parser.add_argument("--qat-ir", nargs="+", default=[], metavar="LABEL=XML", help="QAT IRs, as ov_int8_qat_<LABEL>")
    parser.add_argument("--precision-hint", default="f32", choices=["f32", "bf16", "f16", "default"])
    parser.add_argument("--num-threads", type=int, default=None, help="inference threads (default: CPUs available)")
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
    args.num_threads = args.num_threads or timing.available_cpus()
    args.precisions = list(args.precisions or ALL_PRECISIONS)
    args.precisions += [name for name in args.qat_irs if name not in args.precisions]  # given, hence measured
    for name in args.precisions:
        if name not in ALL_PRECISIONS and name not in args.qat_irs:
            parser.error(f"--precisions {name}: not one of {ALL_PRECISIONS}, nor a QAT IR given with --qat-ir")
    if args.speed_only and "ov_int8_acq" in args.precisions:
        parser.error("--speed-only cannot measure ov_int8_acq: accuracy control needs a trained model")
    if EAGER not in args.precisions:
        args.precisions.insert(0, EAGER)  # every drop is measured against it
    # The stage subprocesses get the same options, minus any stage selection.
    stage_flags = {"--stage", "--precision"}
    passed_on = [
        argument for previous, argument in pairwise(["", *argv]) if stage_flags.isdisjoint({previous, argument})
    ]
    return args, passed_on


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (or one of its stages, when called by itself)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args, passed_on = parse_args(argv)
    if args.input_size is None:  # the export size: the model's pre-processor resize
        from anomalib_dcam.deploy.quantization import pre_processor_stats

        args.input_size = list(pre_processor_stats(load_model(args).pre_processor)[0] or [])
        if not args.input_size:
            sys.exit("The checkpoint's pre-processor has no Resize; pass --input-size HEIGHT WIDTH.")
        passed_on += ["--input-size", *map(str, args.input_size)]
    if args.stage is not None:
        (stage_export if args.stage == "export" else stage_measure)(args)
        return
    settings = deployment_settings(args)
    check_reusable(args.output, settings)
    write_json(args.output / "settings.json", jsonable(settings))
    data_ready = (args.output / "test_images.npy").is_file() and (args.output / "ground_truth.npz").is_file()
    if not data_ready or any(name in EXPORTS and not ir_path(args.output, name).is_file() for name in args.precisions):
        _run_stage(passed_on, "export")
    for name in args.precisions:
        if (args.output / "runs" / name / "measure.json").is_file():
            print(f"[skip] {name}: already measured", flush=True)
            continue
        print(f"[measure] {name}", flush=True)
        _run_stage(passed_on, "measure", name)
    rows = report(args, args.precisions)
    write_reports(args, rows)
    write_record(args.output / "record.json", settings, rows)
    print((args.output / "results.md").read_text())


if __name__ == "__main__":
    main()
