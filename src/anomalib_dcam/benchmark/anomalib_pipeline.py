# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Run anomalib's own benchmark pipeline (what ``anomalib benchmark --config`` runs) and check what it did.

anomalib's pipeline has limits that this wrapper works around without changing it (docs/benchmarks.md):

- it cannot set ``max_epochs`` (its ``Engine`` gets none, so Lightning trains 1000 epochs): the wrapper sets
  ``PL_TRAINER_MAX_EPOCHS``, which Lightning's ``Trainer`` reads as the default of ``max_epochs``;
- it exits 0 when jobs fail, and a model whose constructor fails (missing weights) stops the remaining jobs and the
  CSV: the wrapper watches the pipeline's log records, pairs each job of the grid with its result or error, and exits
  1 naming every job that failed or never ran;
- its ``collect`` step needs every job to have the same configuration keys, else it writes no ``results.csv``: the
  wrapper writes all completed results to its own CSV whatever their keys.

The pipeline itself runs unchanged, in this process, through anomalib's ``Benchmark`` class.
"""

import csv
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = [
    "PipelineCheck",
    "check_pipeline_records",
    "expected_pipeline_jobs",
    "run_anomalib_pipeline",
    "write_checked_csv",
]

_COMPLETED = "Completed with result "
_JOB_ERROR = "Error running job."
_RUNNER_ERROR = "An error occurred when running the runner."


class _RecordCollector(logging.Handler):
    """Keeps the pipeline's job results and errors in order.

    It sits on the root logger, which anomalib's ``redirect_logs`` leaves alone, and sees every record once.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.events: list[tuple[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        error = record.exc_info[1] if record.exc_info else None
        if message.startswith(_COMPLETED):
            self.events.append(("completed", message[len(_COMPLETED) :]))
        elif message == _JOB_ERROR:
            self.events.append(("job_error", error))
        elif message == _RUNNER_ERROR:
            self.events.append(("runner_error", error))


def _describe(error: BaseException | None) -> str:
    """The informative exception of a chain: anomalib wraps job errors in a ``LoggerRedirectError``."""
    if error is None:
        return "unknown error (see runs/pipeline.log)"
    while type(error).__name__ == "LoggerRedirectError" and error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".strip()


def expected_pipeline_jobs(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The jobs anomalib's pipeline makes of a configuration, in its order, as flat ``{dotted key: value}`` dicts.

    Args:
        config: The pipeline configuration (``accelerator`` and ``benchmark`` sections).

    Returns:
        One dict per job, with ``accelerator`` and the flattened grid values (``model.class_path``, ``seed``, ...).
    """
    from anomalib.pipelines.components.utils import get_iterator_from_grid_dict
    from anomalib.utils.config import flatten_dict

    accelerators = config.get("accelerator", "cpu")
    accelerators = accelerators if isinstance(accelerators, list) else [accelerators]
    return [
        {"accelerator": accelerator, **flatten_dict(container)}
        for accelerator in accelerators
        for container in get_iterator_from_grid_dict(config.get("benchmark") or {})
    ]


@dataclass
class PipelineCheck:
    """What the pipeline did with every job of the grid.

    Attributes:
        statuses: Per job, ``"completed"``, ``"failed"`` or ``"not run"``.
        errors: Per job, the error (empty when completed).
        results: Per job, the result dict (empty unless completed).
        runner_errors: Errors that stopped a runner (a model constructor, or anomalib's collect step).
    """

    statuses: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    runner_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every job completed."""
        return all(status == "completed" for status in self.statuses)


def check_pipeline_records(expected: Sequence[dict[str, Any]], events: Sequence[tuple[str, Any]]) -> PipelineCheck:
    """Pair the grid's jobs with the pipeline's events.

    The serial runner runs the jobs in grid order and logs one event per job ("Completed with result ..." or
    "Error running job."). A job whose model or datamodule cannot be built stops its runner with "An error occurred
    when running the runner."; the jobs after it never run.

    Args:
        expected: The jobs, from :func:`expected_pipeline_jobs`.
        events: ``(kind, payload)`` in log order: ``("completed", result text)``, ``("job_error", exception)`` or
            ``("runner_error", exception)``.

    Returns:
        The check.
    """
    import ast

    check = PipelineCheck()
    position = 0
    for kind, payload in events:
        if kind == "runner_error":
            message = _describe(payload)
            if position < len(expected):
                check.statuses.append("failed")
                check.errors.append(f"{message} (building the job stopped the pipeline)")
                check.results.append({})
                position += 1
            check.runner_errors.append(message)
            continue
        if position >= len(expected):
            continue
        if kind == "completed":
            try:
                result = ast.literal_eval(payload)
            except (ValueError, SyntaxError):
                result = {"raw_result": payload}
            check.statuses.append("completed")
            check.errors.append("")
            check.results.append(result if isinstance(result, dict) else {"raw_result": payload})
        else:
            check.statuses.append("failed")
            check.errors.append(_describe(payload))
            check.results.append({})
        position += 1
    for _ in range(position, len(expected)):
        check.statuses.append("not run")
        check.errors.append("never started: an earlier error stopped the pipeline")
        check.results.append({})
    return check


def write_checked_csv(expected: Sequence[dict[str, Any]], check: PipelineCheck, path: Path) -> None:
    """Write one row per job: its number, status, error, configuration and result (all columns of all jobs).

    Args:
        expected: The jobs, from :func:`expected_pipeline_jobs`.
        check: What happened to them, from :func:`check_pipeline_records`.
        path: The CSV file.
    """
    columns = list(dict.fromkeys(["job", "status", "error", *(key for job in expected for key in job)]))
    columns += list(dict.fromkeys(key for result in check.results for key in result if key not in columns))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for index, (job, status, error, result) in enumerate(
            zip(expected, check.statuses, check.errors, check.results, strict=True),
            start=1,
        ):
            writer.writerow({**job, **result, "job": index, "status": status, "error": error})


def _job_label(job: dict[str, Any]) -> str:
    data = ", ".join(f"{key.split('.')[-1]}={value}" for key, value in job.items() if key.startswith("data.init_args"))
    arguments = ", ".join(
        f"{key.split('.')[-1]}={value}" for key, value in job.items() if key.startswith("model.init_args")
    )
    return f"{job.get('model.class_path')}({arguments}) on {job.get('data.class_path')}({data}), seed {job.get('seed')}"


def run_anomalib_pipeline(
    config_path: str | Path,
    max_epochs: int | None,
    output: str | Path | None = None,
    write: Callable[[str], None] | None = None,
) -> int:
    """Run ``anomalib benchmark --config <config_path>`` in this process and check every job.

    Args:
        config_path: anomalib pipeline configuration (``accelerator`` and ``benchmark`` sections).
        max_epochs: Epochs of every job (sets ``PL_TRAINER_MAX_EPOCHS``); ``None`` keeps that variable, which must
            then be set.
        output: CSV with one row per job (status, error and result); defaults to
            ``runs/benchmark/checked-<time>.csv``.
        write: Where messages go. Defaults to standard output.

    Returns:
        ``0`` when every job completed, ``1`` when a job failed or never ran, ``2`` for a usage error.
    """
    import yaml
    from jsonargparse import Namespace

    write = write or (lambda line: print(line, flush=True))
    config_path = Path(config_path)
    if not config_path.is_file():
        write(f"error: --config {str(config_path)!r}: no such file.")
        return 2
    if max_epochs is not None:
        if max_epochs < 1:
            write(f"error: --max-epochs={max_epochs} is not accepted; it must be >= 1.")
            return 2
        os.environ["PL_TRAINER_MAX_EPOCHS"] = str(max_epochs)
    elif not os.environ.get("PL_TRAINER_MAX_EPOCHS"):
        write(
            "error: anomalib's benchmark pipeline cannot set max_epochs (Lightning would train 1000 epochs). "
            "Pass --max-epochs N, or set PL_TRAINER_MAX_EPOCHS=N in the environment.",
        )
        return 2
    config = yaml.safe_load(config_path.read_text()) or {}
    expected = expected_pipeline_jobs(config)
    epochs = os.environ["PL_TRAINER_MAX_EPOCHS"]
    write(f"anomalib benchmark --config {config_path}: {len(expected)} jobs, {epochs} epochs each")
    for index, job in enumerate(expected, start=1):
        write(f"  [{index}] {_job_label(job)}")

    from anomalib.loggers import configure_logger
    from anomalib.pipelines import Benchmark

    configure_logger()  # as anomalib's command does first: INFO level, so that job results are logged
    runs = Path("runs") / "benchmark"
    before = set(runs.glob("*/results.csv")) if runs.is_dir() else set()
    collector = _RecordCollector()
    logging.getLogger().addHandler(collector)
    try:
        Benchmark().run(Namespace(config=str(config_path)))
    finally:
        logging.getLogger().removeHandler(collector)
    anomalib_csvs = sorted(set(runs.glob("*/results.csv")) - before) if runs.is_dir() else []

    check = check_pipeline_records(expected, collector.events)
    output = Path(output) if output else runs / f"checked-{datetime.now().strftime('%Y-%m-%d-%H_%M_%S')}.csv"
    write_checked_csv(expected, check, output)

    write("")
    for index, (job, status, error) in enumerate(zip(expected, check.statuses, check.errors, strict=True), start=1):
        write(f"  [{index}] {status.upper()}: {_job_label(job)}" + (f"\n      {error}" if error else ""))
    if anomalib_csvs:
        write(f"anomalib's results: {', '.join(map(str, anomalib_csvs))}")
    else:
        reason = f" ({check.runner_errors[-1]})" if check.runner_errors else ""
        write(f"anomalib wrote no results.csv{reason}; every completed result is in {output}.")
    write(f"Checked results: {output}; anomalib's log: runs/pipeline.log")
    if check.ok:
        write(f"All {len(expected)} jobs completed.")
        return 0
    failed = sum(status != "completed" for status in check.statuses)
    write(f"{failed} of {len(expected)} jobs failed or never ran (anomalib's own command would have exited 0).")
    return 1
