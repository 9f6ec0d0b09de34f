# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Inference timing and memory: the one implementation behind every latency, throughput and peak-memory figure.

``anomalib-dcam benchmark`` (its latency phase) and ``benchmarks/deployment.py`` both time with these functions:

- latency: batch-1 synchronous calls after untimed warm-up calls; the median (and the 90th percentile) of the timed
  calls. OpenVINO compiles with ``PERFORMANCE_HINT=LATENCY`` (one stream), the stated ``INFERENCE_PRECISION_HINT``
  and ``INFERENCE_NUM_THREADS``, for the static shape of the input;
- throughput: synchronous calls at a batch size (:func:`compile_request`, :func:`torch_callable`), or OpenVINO's
  asynchronous queue with ``PERFORMANCE_HINT=THROUGHPUT`` and its optimal number of requests
  (:func:`openvino_async_throughput`);
- memory: the process's resident-memory high-water mark (:func:`peak_rss_mb`), resettable on Linux.

OpenVINO's own ``benchmark_app`` times the same IR with the same settings (:func:`benchmark_app_latency`)::

    python -m anomalib_dcam.benchmark.timing exported/weights/openvino/model.xml --precision-hint f32 --threads 2

prints both medians side by side, alternating the two tools (and several IRs, given several), so that the figures can
be checked against it.
"""

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "available_cpus",
    "benchmark_app_latency",
    "compile_request",
    "cpu_name",
    "current_rss_mb",
    "latency_stats",
    "openvino_async_throughput",
    "peak_rss_mb",
    "reset_peak_rss",
    "time_calls",
    "torch_callable",
]


def cpu_name() -> str:
    """The processor's model name (Linux ``/proc/cpuinfo``, as ``lscpu`` shows it), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_cpus() -> int:
    """CPUs this process may run on: the thread count of both runtimes unless one is stated.

    torch would otherwise start one thread per physical core of the machine, even in a container limited to fewer,
    while OpenVINO follows the CPU affinity; equal thread counts keep the comparison fair.
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _proc_status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (since the last :func:`reset_peak_rss`).

    On Linux this is ``VmHWM`` of the process's own address space. ``ru_maxrss`` is not used there: it keeps the
    parent's resident size from before ``exec``, so every worker would report at least the parent's memory.
    """
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB elsewhere


def current_rss_mb() -> float:
    """Current resident memory of this process in MiB."""
    return _proc_status_mb("VmRSS") or peak_rss_mb()


def reset_peak_rss() -> bool:
    """Reset the high-water mark to the current resident memory (Linux ``clear_refs``); ``False`` where impossible.

    Importing PyTorch, anomalib and OpenVINO peaks higher than many models need; without the reset that transient peak
    would be reported for every runtime alike.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def time_calls(call: Callable[[], object], warmup: int, iterations: int) -> list[float]:
    """Seconds of each of ``iterations`` calls of ``call``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        call()
    durations = []
    for _ in range(iterations):
        start = time.perf_counter()
        call()
        durations.append(time.perf_counter() - start)
    return durations


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """Median and 90th percentile of call durations, in milliseconds."""
    milliseconds = np.asarray(seconds) * 1000.0
    return {"latency_ms": float(np.median(milliseconds)), "latency_p90_ms": float(np.percentile(milliseconds, 90))}


def _compile_config(precision_hint: str, performance_hint: str, threads: int | None) -> dict[str, Any]:
    # anomalib_dcam.deploy.openvino_config says the same, but importing it loads anomalib and torch, whose resident
    # memory would then count in every OpenVINO process's peak.
    config: dict[str, Any] = {"PERFORMANCE_HINT": performance_hint}
    if precision_hint != "default":
        config["INFERENCE_PRECISION_HINT"] = precision_hint
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


def compile_request(
    xml: str | Path,
    shape: Sequence[int],
    precision_hint: str,
    threads: int | None,
    performance_hint: str = "LATENCY",
) -> Any:
    """An OpenVINO infer request for the CPU, compiled for a static input shape with the stated settings.

    Args:
        xml: The IR.
        shape: The input shape, ``(N, C, H, W)``: what a deployment compiles.
        precision_hint: ``INFERENCE_PRECISION_HINT`` (``f32``, ``bf16``, ``f16``; ``default``: the device's).
        threads: ``INFERENCE_NUM_THREADS``; ``None`` lets OpenVINO decide.
        performance_hint: ``PERFORMANCE_HINT`` (``LATENCY``: one stream).

    Returns:
        The ``openvino.InferRequest``; ``request.infer({0: images})`` runs one synchronous inference.
    """
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(xml))
    model.reshape(list(shape))
    return core.compile_model(
        model, "CPU", _compile_config(precision_hint, performance_hint, threads)
    ).create_infer_request()


def openvino_async_throughput(
    xml: str | Path,
    image: np.ndarray,
    precision_hint: str,
    threads: int | None,
    count: int,
) -> dict[str, float]:
    """Images per second of ``count`` batch-1 requests through an ``AsyncInferQueue`` (``PERFORMANCE_HINT=THROUGHPUT``).

    Returns:
        ``throughput_images_per_s`` and ``throughput_requests`` (OpenVINO's optimal number of requests).
    """
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", _compile_config(precision_hint, "THROUGHPUT", threads))
    requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue = ov.AsyncInferQueue(compiled, requests)
    for _ in range(requests):  # warm-up: one inference per request
        queue.start_async({0: image})
    queue.wait_all()
    start = time.perf_counter()
    for _ in range(count):
        queue.start_async({0: image})
    queue.wait_all()
    return {"throughput_images_per_s": count / (time.perf_counter() - start), "throughput_requests": requests}


def torch_callable(model: Any, inputs: np.ndarray, threads: int | None) -> Callable[[], object]:
    """An eager PyTorch inference of ``inputs`` under ``torch.inference_mode`` with ``threads`` threads."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    tensor = torch.from_numpy(np.ascontiguousarray(inputs))

    def call() -> object:
        with torch.inference_mode():
            return model(tensor)

    return call


def benchmark_app_latency(
    xml: str | Path,
    shape: Sequence[int],
    precision_hint: str,
    threads: int | None,
    iterations: int,
) -> float:
    """Median latency in ms that OpenVINO's ``benchmark_app`` measures with the settings of :func:`compile_request`.

    The synchronous API and the same compile configuration (``PERFORMANCE_HINT=LATENCY``, precision hint, threads,
    given to ``benchmark_app`` as a ``-load_config`` file) for the same static shape.

    Raises:
        FileNotFoundError: If ``benchmark_app`` (installed with the ``openvino`` package) is not found.
    """
    executable = shutil.which("benchmark_app") or shutil.which("benchmark_app", path=str(Path(sys.executable).parent))
    if executable is None:
        msg = "benchmark_app not found; it is installed with the openvino package."
        raise FileNotFoundError(msg)
    config = {key: str(value) for key, value in _compile_config(precision_hint, "LATENCY", threads).items()}
    with tempfile.TemporaryDirectory() as folder:
        config_file = Path(folder) / "config.json"
        config_file.write_text(json.dumps({"CPU": config}))
        command = [
            executable,
            "-m",
            str(xml),
            "-d",
            "CPU",
            "-api",
            "sync",
            "-hint",
            "latency",
            "-niter",
            str(iterations),
        ]
        command += ["-shape", "[" + ",".join(map(str, shape)) + "]", "-load_config", str(config_file)]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout  # OpenVINO's own tool
    value, unit = re.search(r"Median:\s+([\d.]+) (ms|us)", output).groups()  # type: ignore[union-attr]
    return float(value) / (1000.0 if unit == "us" else 1.0)


def main(argv: Sequence[str] | None = None) -> int:
    """Time IRs at batch 1 with this module and with ``benchmark_app``, alternating, and print the medians."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("xml", type=Path, nargs="+", help="the IRs (model.xml), timed in turn in every round")
    parser.add_argument("--precision-hint", default="f32", choices=["f32", "bf16", "f16", "default"])
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: the CPUs available)")
    parser.add_argument("--iterations", type=int, default=200, help="timed calls per round (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both tools (default: %(default)s)")
    args = parser.parse_args(argv)
    import openvino as ov

    threads = args.threads or available_cpus()
    medians: dict[Path, tuple[list[float], list[float]]] = {xml: ([], []) for xml in args.xml}
    for _ in range(args.rounds):
        for xml, (ours, theirs) in medians.items():
            input_shape = ov.Core().read_model(str(xml)).inputs[0].get_partial_shape()
            shape = [1, *(input_shape[axis].get_length() for axis in range(1, input_shape.rank.get_length()))]
            image = np.random.default_rng(0).random(shape, dtype=np.float32)
            call = partial(compile_request(xml, shape, args.precision_hint, threads).infer, {0: image})
            ours.append(latency_stats(time_calls(call, 10, args.iterations))["latency_ms"])
            theirs.append(benchmark_app_latency(xml, shape, args.precision_hint, threads, args.iterations))
    print(
        f"batch 1, synchronous, PERFORMANCE_HINT=LATENCY (one stream), INFERENCE_PRECISION_HINT={args.precision_hint}, "
        f"{threads} threads; {cpu_name()}; OpenVINO {ov.__version__}; medians of {args.rounds} alternating rounds of "
        f"{args.iterations} calls",
    )
    for xml, (ours, theirs) in medians.items():
        ours_ms, theirs_ms = float(np.median(ours)), float(np.median(theirs))
        print(f"{xml}: timing {ours_ms:.3f} ms, benchmark_app {theirs_ms:.3f} ms, ratio {ours_ms / theirs_ms:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
