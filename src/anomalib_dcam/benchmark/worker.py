# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""The phases of one benchmark job, each run in its own process so that its peak memory is its own.

``python -m anomalib_dcam.benchmark.worker <job folder> <phase> [<phase> ...]`` reads ``job.json`` from the job folder
and writes ``<phase>.json`` (``latency_<runtime>.json`` for timings) there, or ``<phase>.error.json`` and exit code 1.

- ``train``: build data and model, fit, test (quality jobs only: per-category metrics), save the trained model with
  ``to_torch``. Peak memory is read right after fitting.
- ``export``: load the saved model, convert it once to OpenVINO (``to_onnx``, ``openvino.convert_model``) and save it
  as FP32, FP16 and INT8 (post-training quantization) with :mod:`anomalib_dcam.deploy`, as ``benchmarks/deployment.py``
  does: anomalib's ``to_openvino`` pipeline with a single ONNX export instead of one per precision.
- ``latency``: time one runtime at batch 1 and at the throughput batch size on the CPU, in a fresh process
  (:mod:`anomalib_dcam.benchmark.timing`).

Lines starting with ``@@phase`` on standard output report progress to the parent process.
"""

import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .records import write_json
from .timing import available_cpus, compile_request, latency_stats, peak_rss_mb, time_calls, torch_callable

__all__ = ["main", "read_json"]

PHASE_MARKER = "@@phase"
TORCH_EXPORT = Path("export") / "weights" / "torch" / "model.pt"


def report_phase(phase: str, detail: str = "") -> None:
    """Tell the parent process which phase is running."""
    print(f"{PHASE_MARKER} {phase} {detail}".rstrip(), flush=True)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` when the file is missing or not valid JSON (a phase not finished)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _size_mb(*paths: Path) -> float:
    return sum(path.stat().st_size for path in paths) / 2**20


def run_train(job_dir: Path) -> dict[str, Any]:
    """Train and test one job; save the trained model for the export phase."""
    from lightning.pytorch import seed_everything

    from anomalib_dcam.benchmark.callbacks import TrainingMonitor
    from anomalib_dcam.benchmark.models import build_datamodule, build_model
    from anomalib_dcam.benchmark.training import timed_fit, timed_test
    from anomalib_dcam.callbacks import PerCategoryMetrics

    job = json.loads((job_dir / "job.json").read_text())
    speed_only = bool(job["speed_only"])
    report_phase("build", "data and model")
    seed_everything(job["seed"], workers=True)
    datamodule = build_datamodule(job["data"]["class_path"], job["data"]["init_args"])
    model = build_model(job["model"]["class_path"], job["model"]["init_args"], job["image_size"], speed_only)
    monitor = TrainingMonitor(on_epoch_end=lambda epoch, total: report_phase("fit", f"epoch {epoch}/{total} done"))
    # The report uses the per-category and mean rows; pooled pixel metrics would cost minutes and gigabytes.
    per_category = PerCategoryMetrics(output_dir=job_dir, print_table=False, global_pixel_metrics=False)
    report_phase("fit", f"0/{job['trainer'].get('max_epochs', '?')} epochs")
    trainer = {"enable_progress_bar": False, "enable_model_summary": False, **job["trainer"]}
    engine, fit_seconds = timed_fit(model, datamodule, job_dir / "engine", [monitor, per_category], **trainer)
    result: dict[str, Any] = {
        "epochs": int(engine.trainer.current_epoch),
        "train_images_seen": monitor.images,
        "train_loop_s": monitor.seconds,
        "fit_s": fit_seconds,
        "train_images_per_s": monitor.images / monitor.seconds if monitor.seconds > 0 else None,
        "train_peak_rss_mb": peak_rss_mb(),  # the high-water mark so far: imports, data and training
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "settings": job["settings"],  # what a rerun compares before it reuses this training
        "metrics": None,
        "per_category": None,
        "test_s": None,
    }
    if not speed_only:  # quality of random weights is never measured, let alone reported
        report_phase("test", "metrics")
        result["test_s"] = timed_test(engine, model, datamodule)
        result["per_category"] = per_category.results
        result["metrics"] = next((row for row in per_category.results if row["category"] == "mean"), None)
    report_phase("save", "to_torch")
    model.eval()
    # Detach the trainer: a model whose __getstate__ keeps it (anomalib's EfficientAd) would pickle the whole
    # trainer, data included, into the saved model.
    model.trainer = None
    torch_path = model.to_torch(job_dir / "export")
    result["torch_file"] = str(torch_path.relative_to(job_dir))
    result["torch_size_mb"] = _size_mb(torch_path)
    return result


def _load_exported_model(job_dir: Path) -> Any:
    import torch

    # A file this benchmark wrote itself: anomalib's to_torch pickles the whole module.
    return torch.load(job_dir / TORCH_EXPORT, map_location="cpu", weights_only=False)["model"].eval()


def run_export(job_dir: Path) -> dict[str, Any]:
    """Export the trained model to OpenVINO FP32, FP16 and INT8 (those of the configured runtimes), one conversion."""
    from anomalib_dcam.deploy import compress_openvino_model, convert_to_openvino, save_openvino

    job = json.loads((job_dir / "job.json").read_text())
    wanted = [runtime for runtime in job["inference"]["runtimes"] if runtime.startswith("openvino_")]
    model = _load_exported_model(job_dir)
    result: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters()), "runtimes": {}, "errors": {}}
    if not wanted:
        return result
    report_phase("export", "ONNX")
    start = time.perf_counter()
    base = convert_to_openvino(model, (job["image_size"], job["image_size"]))
    result["onnx_s"] = time.perf_counter() - start
    for runtime in wanted:
        report_phase("export", runtime)
        compression = {"openvino_fp32": None, "openvino_fp16": "FP16", "openvino_int8": "INT8_PTQ"}[runtime]
        start = time.perf_counter()
        try:
            calibration = _calibration_datamodule(job) if compression == "INT8_PTQ" else None
            pre_processor = getattr(model, "pre_processor", None)
            compressed = compress_openvino_model(base.clone(), compression, calibration, pre_processor=pre_processor)
            xml_path = save_openvino(compressed, job_dir / "export" / runtime, compression_type=compression)
        except Exception as error:  # noqa: BLE001  # one precision failing must not lose the others
            result["errors"][runtime] = f"{type(error).__name__}: {error}"
            continue
        result["runtimes"][runtime] = {
            "file": str(xml_path.relative_to(job_dir)),
            "size_mb": _size_mb(xml_path, xml_path.with_suffix(".bin")),
            "export_s": time.perf_counter() - start,
        }
    return result


def _calibration_datamodule(job: dict[str, Any]) -> Any:
    """INT8 calibration images from the job's datamodule (``anomalib_dcam.deploy``'s calibration sources)."""
    from lightning.pytorch import seed_everything

    from anomalib_dcam.benchmark.models import build_datamodule
    from anomalib_dcam.deploy import build_calibration_datamodule

    seed_everything(job["seed"])
    return build_calibration_datamodule(
        job["inference"]["int8_calibration"],
        build_datamodule(job["data"]["class_path"], job["data"]["init_args"]),
        image_size=job["image_size"],
        num_images=job["inference"]["int8_calibration_images"],
        seed=job["seed"],
    )


def run_latency(job_dir: Path, runtime: str) -> dict[str, Any]:
    """Time one runtime: median batch-1 latency and throughput at the configured batch size, synchronous calls."""
    job = json.loads((job_dir / "job.json").read_text())
    settings = job["inference"]
    threads = settings["threads"] or available_cpus()
    hint = settings["precision_hints"].get(runtime)
    report_phase("latency", runtime)
    model = _load_exported_model(job_dir) if runtime == "torch" else None
    # The runner times an OpenVINO runtime only after its export succeeded.
    exported = {} if model is not None else json.loads((job_dir / output_file("export")).read_text())["runtimes"]

    def prepare(inputs: np.ndarray) -> Callable[[], object]:
        if model is not None:
            return torch_callable(model, inputs, threads)
        request = compile_request(job_dir / exported[runtime]["file"], inputs.shape, hint, threads)
        return lambda: request.infer({0: inputs})

    size = job["image_size"]
    rng = np.random.default_rng(0)
    single = rng.random((1, 3, size, size), dtype=np.float32)
    durations = time_calls(prepare(single), settings["warmup"], settings["iterations"])
    batch = rng.random((settings["batch_size"], 3, size, size), dtype=np.float32)
    batch_durations = time_calls(prepare(batch), min(1, settings["warmup"]), settings["batch_iterations"])
    return {
        "runtime": runtime,
        **latency_stats(durations),
        "throughput_ips": settings["batch_size"] * len(batch_durations) / sum(batch_durations),
        "peak_rss_mb": peak_rss_mb(),
        "precision_hint": hint,
        "threads": threads,
        "settings": settings_fingerprint(settings),
    }


def settings_fingerprint(settings: dict[str, Any]) -> dict[str, Any]:
    """The inference settings that a timing depends on (a change re-measures it on the next run)."""
    keys = ("warmup", "iterations", "batch_size", "batch_iterations", "threads", "precision_hints")
    return {key: settings[key] for key in keys}


def output_file(phase: str, runtime: str | None = None) -> str:
    """Name of the file a phase writes when it succeeds (``<phase>.error.json`` when it fails)."""
    return f"latency_{runtime}.json" if phase == "latency" else f"{phase}.json"


def error_file(phase: str, runtime: str | None = None) -> str:
    """Name of the file a failed phase writes."""
    return output_file(phase, runtime).removesuffix(".json") + ".error.json"


def _run_phase(job_dir: Path, phase: str, runtime: str | None) -> bool:
    (job_dir / error_file(phase, runtime)).unlink(missing_ok=True)
    try:
        result = run_latency(job_dir, runtime) if phase == "latency" else PHASES[phase](job_dir)  # type: ignore[arg-type]
    except Exception as error:  # noqa: BLE001  # reported to the parent, which names the job
        traceback.print_exc()
        failure = {"phase": phase, "runtime": runtime, "error": f"{type(error).__name__}: {error}"}
        write_json(job_dir / error_file(phase, runtime), failure)
        return False
    write_json(job_dir / output_file(phase, runtime), result)
    return True


PHASES = {"train": run_train, "export": run_export}
USAGE = "usage: python -m anomalib_dcam.benchmark.worker JOB_DIR {train,export,latency:RUNTIME} [...]"


def main(argv: Sequence[str] | None = None) -> int:
    """Run phases of one job in order, stopping at the first failure: ``<job folder> <phase> [<phase> ...]``.

    A phase is ``train``, ``export`` or ``latency:<runtime>``. The benchmark runs training and export in one process
    (their memory is not the inference memory) and every latency phase alone in a fresh one.

    Returns:
        ``0`` when every phase succeeded, ``1`` when one failed, ``2`` for a usage error.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    steps = [(phase, runtime or None) for phase, _, runtime in (step.partition(":") for step in argv[1:])]
    if not steps or any(phase not in {*PHASES, "latency"} or bool(r) != (phase == "latency") for phase, r in steps):
        print(USAGE)
        return 2
    return 0 if all(_run_phase(Path(argv[0]), phase, runtime) for phase, runtime in steps) else 1


if __name__ == "__main__":
    raise SystemExit(main())
