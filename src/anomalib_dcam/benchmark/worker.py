# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""The phases of one benchmark job, each run in its own process so that its peak memory is its own.

``python -m anomalib_dcam.benchmark.worker <job folder> <phase> [<phase> ...]`` reads ``job.json`` from the job folder
and writes ``<phase>.json`` (``latency_<runtime>.json`` for timings) there, or ``<phase>.error.json`` and exit code 1.

- ``train``: build data and model, fit, test (quality jobs only: per-category metrics and example heat maps), save
  the trained model with ``to_torch``. Peak memory is read right after fitting.
- ``export``: load the saved model, export it once to ONNX (``to_onnx``), convert to OpenVINO and save it as FP32,
  FP16 and INT8 (post-training quantization with :mod:`anomalib_dcam.deploy`). This is anomalib's ``to_openvino``
  pipeline (ONNX, ``openvino.convert_model``, NNCF, ``openvino.save_model``) with a single ONNX export instead of
  one per precision.
- ``latency``: time one runtime at batch 1 and at the throughput batch size on the CPU, in a fresh process.

Lines starting with ``@@phase`` on standard output report progress to the parent process.
"""

import json
import os
import platform
import resource
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PHASE_MARKER = "@@phase"
TORCH_EXPORT = Path("export") / "weights" / "torch" / "model.pt"
EXAMPLES_FILE = "examples.npz"


def report_phase(phase: str, detail: str = "") -> None:
    """Tell the parent process which phase is running."""
    print(f"{PHASE_MARKER} {phase} {detail}".rstrip(), flush=True)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` when the file is missing or not valid JSON (a phase not finished)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cpu_name() -> str:
    """The processor's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    On Linux this is ``VmHWM`` of the process's own address space. ``ru_maxrss`` is not used there: it keeps the
    parent's resident size from before ``exec``, so every worker would report at least the parent's memory.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB elsewhere


def available_cpus() -> int:
    """CPUs this process may run on; both runtimes get this many threads unless the configuration sets them.

    torch would otherwise start one thread per physical core of the machine, even in a container limited to fewer,
    while OpenVINO follows the CPU affinity; equal thread counts keep the comparison fair.
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _write_json(path: Path, content: dict[str, Any]) -> None:
    temporary = path.with_suffix(f".tmp{os.getpid()}")
    temporary.write_text(json.dumps(content, indent=2, default=str) + "\n")
    temporary.replace(path)  # atomic: a half-written file never looks finished


def _size_mb(*paths: Path) -> float:
    return sum(path.stat().st_size for path in paths) / 2**20


# ---------------------------------------------------------------------------------------------------- train phase


def _report_epoch(epoch: int, total: int) -> None:
    report_phase("fit", f"epoch {epoch}/{total} done")


def run_train(job_dir: Path) -> dict[str, Any]:
    """Train and test one job; save the trained model for the export phase."""
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_dcam.benchmark.callbacks import ExampleCollector, TrainingMonitor
    from anomalib_dcam.benchmark.models import build_datamodule, build_model
    from anomalib_dcam.callbacks import PerCategoryMetrics

    job = json.loads((job_dir / "job.json").read_text())
    speed_only = bool(job["speed_only"])
    report_phase("build", "data and model")
    seed_everything(job["seed"], workers=True)
    datamodule = build_datamodule(job["data"]["class_path"], job["data"]["init_args"])
    model = build_model(job["model"]["class_path"], job["model"]["init_args"], job["image_size"], speed_only)
    monitor = TrainingMonitor(on_epoch_end=_report_epoch)
    collector = ExampleCollector(job["examples"])
    # The report uses the per-category and mean rows; pooled pixel metrics would cost minutes and gigabytes.
    per_category = PerCategoryMetrics(output_dir=job_dir, print_table=False, global_pixel_metrics=False)
    trainer_arguments = {"enable_progress_bar": False, "enable_model_summary": False, **job["trainer"]}
    engine = Engine(
        default_root_dir=job_dir / "engine",
        logger=False,
        callbacks=[monitor, per_category, collector],
        **trainer_arguments,
    )

    report_phase("fit", f"0/{job['trainer'].get('max_epochs', '?')} epochs")
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start
    train_peak = peak_rss_mb()  # the high-water mark so far: imports, data and training

    result: dict[str, Any] = {
        "epochs": int(engine.trainer.current_epoch),
        "train_images_seen": monitor.images,
        "train_loop_s": monitor.seconds,
        "fit_s": fit_seconds,
        "train_images_per_s": monitor.images / monitor.seconds if monitor.seconds > 0 else None,
        "train_peak_rss_mb": train_peak,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "metrics": None,
        "per_category": None,
        "test_s": None,
    }
    if not speed_only:  # quality of random weights is never measured, let alone reported
        report_phase("test", "metrics and example heat maps")
        start = time.perf_counter()
        engine.test(model=model, datamodule=datamodule, verbose=False)
        result["test_s"] = time.perf_counter() - start
        rows = per_category.results
        result["per_category"] = rows
        result["metrics"] = next((row for row in rows if row["category"] == "mean"), None)
        collector.save(job_dir / EXAMPLES_FILE)

    report_phase("save", "to_torch")
    model.eval()
    # Detach the trainer: a model whose __getstate__ keeps it (anomalib's EfficientAd) would pickle the whole
    # trainer, data included, into the saved model.
    model.trainer = None
    torch_path = model.to_torch(job_dir / "export")
    result["torch_file"] = str(torch_path.relative_to(job_dir))
    result["torch_size_mb"] = _size_mb(torch_path)
    return result


# ---------------------------------------------------------------------------------------------------- export phase


def _load_exported_model(job_dir: Path) -> Any:
    import torch

    # A file this benchmark wrote itself: anomalib's to_torch pickles the whole module.
    return torch.load(job_dir / TORCH_EXPORT, map_location="cpu", weights_only=False)["model"].eval()


def run_export(job_dir: Path) -> dict[str, Any]:
    """Export the trained model to OpenVINO FP32, FP16 and INT8 (those of the configured runtimes)."""
    import tempfile

    import openvino as ov

    job = json.loads((job_dir / "job.json").read_text())
    inference = job["inference"]
    wanted = [runtime for runtime in inference["runtimes"] if runtime.startswith("openvino_")]
    model = _load_exported_model(job_dir)
    size = job["image_size"]
    result: dict[str, Any] = {
        "params": sum(parameter.numel() for parameter in model.parameters()),
        "runtimes": {},
        "errors": {},
    }
    if not wanted:
        return result
    report_phase("export", "ONNX")
    with tempfile.TemporaryDirectory() as onnx_dir:
        start = time.perf_counter()
        # Opset 18 is what the exporter produces anyway; asking for it skips a failing down-conversion attempt.
        onnx_path = model.to_onnx(onnx_dir, input_size=(size, size), opset_version=18)
        result["onnx_s"] = time.perf_counter() - start
        ov_model = ov.convert_model(onnx_path)
    for runtime in wanted:
        report_phase("export", runtime)
        xml_path = job_dir / "export" / "weights" / runtime / "model.xml"
        xml_path.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        try:
            if runtime == "openvino_int8":
                compressed = _quantize_int8(ov_model.clone(), model, job)
                ov.save_model(compressed, xml_path, compress_to_fp16=False)
            else:
                ov.save_model(ov_model.clone(), xml_path, compress_to_fp16=runtime == "openvino_fp16")
        except Exception as error:  # noqa: BLE001  # one precision failing must not lose the others
            result["errors"][runtime] = f"{type(error).__name__}: {error}"
            continue
        result["runtimes"][runtime] = {
            "file": str(xml_path.relative_to(job_dir)),
            "size_mb": _size_mb(xml_path, xml_path.with_suffix(".bin")),
            "export_s": time.perf_counter() - start,
        }
    return result


def _quantize_int8(ov_model: Any, model: Any, job: dict[str, Any]) -> Any:
    """INT8 post-training quantization with the deploy module's calibration sources."""
    from lightning.pytorch import seed_everything

    from anomalib_dcam.benchmark.models import build_datamodule
    from anomalib_dcam.deploy import build_calibration_datamodule, compress_openvino_model

    seed_everything(job["seed"])
    datamodule = build_datamodule(job["data"]["class_path"], job["data"]["init_args"])
    calibration = build_calibration_datamodule(
        job["inference"]["int8_calibration"],
        datamodule,
        image_size=job["image_size"],
        num_images=job["inference"]["int8_calibration_images"],
        seed=job["seed"],
    )
    return compress_openvino_model(
        ov_model,
        "INT8_PTQ",
        datamodule=calibration,
        pre_processor=getattr(model, "pre_processor", None),
    )


# ---------------------------------------------------------------------------------------------------- latency phase


def _time_calls(call: Callable[[], object], warmup: int, iterations: int) -> list[float]:
    for _ in range(warmup):
        call()
    durations = []
    for _ in range(iterations):
        start = time.perf_counter()
        call()
        durations.append(time.perf_counter() - start)
    return durations


def _torch_runner(job_dir: Path, threads: int) -> Callable[[np.ndarray], Callable[[], object]]:
    import torch

    torch.set_num_threads(threads)
    model = _load_exported_model(job_dir)

    def prepare(images: np.ndarray) -> Callable[[], object]:
        tensor = torch.from_numpy(images)

        def call() -> object:
            with torch.inference_mode():
                return model(tensor)

        return call

    return prepare


def _openvino_runner(
    job_dir: Path,
    runtime: str,
    threads: int,
    hint: str,
) -> Callable[[np.ndarray], Callable[[], object]]:
    import openvino as ov

    core = ov.Core()
    xml_path = job_dir / "export" / "weights" / runtime / "model.xml"
    config: dict[str, Any] = {} if hint == "default" else {"INFERENCE_PRECISION_HINT": hint}
    config["INFERENCE_NUM_THREADS"] = threads

    def prepare(images: np.ndarray) -> Callable[[], object]:
        model = core.read_model(xml_path)
        model.reshape(list(images.shape))  # static shape per measurement: what a deployment compiles
        request = core.compile_model(model, "CPU", config).create_infer_request()
        return lambda: request.infer({0: images})

    return prepare


def run_latency(job_dir: Path, runtime: str) -> dict[str, Any]:
    """Time one runtime: median batch-1 latency and throughput at the configured batch size."""
    job = json.loads((job_dir / "job.json").read_text())
    settings = job["inference"]
    threads = settings["threads"] or available_cpus()
    hint = settings["precision_hints"].get(runtime)
    report_phase("latency", runtime)
    if runtime == "torch":
        prepare = _torch_runner(job_dir, threads)
    else:
        prepare = _openvino_runner(job_dir, runtime, threads, hint)
    size = job["image_size"]
    rng = np.random.default_rng(0)
    single = rng.random((1, 3, size, size), dtype=np.float32)
    durations = _time_calls(prepare(single), settings["warmup"], settings["iterations"])
    batch = rng.random((settings["batch_size"], 3, size, size), dtype=np.float32)
    batch_durations = _time_calls(prepare(batch), min(1, settings["warmup"]), settings["batch_iterations"])
    return {
        "runtime": runtime,
        "latency_ms": float(np.median(durations) * 1000),
        "latency_p90_ms": float(np.percentile(durations, 90) * 1000),
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


# ---------------------------------------------------------------------------------------------------- entry point


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
        _write_json(job_dir / error_file(phase, runtime), failure)
        return False
    _write_json(job_dir / output_file(phase, runtime), result)
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
    if len(argv) < 2:
        print(USAGE)
        return 2
    job_dir = Path(argv[0])
    steps = []
    for step in argv[1:]:
        phase, _, runtime = step.partition(":")
        if phase not in {*PHASES, "latency"} or bool(runtime) != (phase == "latency"):
            print(USAGE)
            return 2
        steps.append((phase, runtime or None))
    for phase, runtime in steps:
        if not _run_phase(job_dir, phase, runtime):
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
