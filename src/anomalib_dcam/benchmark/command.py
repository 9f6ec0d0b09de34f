# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""``anomalib-dcam benchmark``: models x datamodules x seeds, with quality, speed, memory and size, resumable.

Examples:
    anomalib-dcam benchmark --config configs/benchmark_industrial.yaml
    anomalib-dcam benchmark --config configs/benchmark_industrial.yaml --speed-only-without-weights
    anomalib-dcam benchmark --config configs/benchmark_industrial.yaml --list
"""

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import BenchmarkConfig

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomalib-dcam benchmark",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog="docs/benchmarks.md describes the configuration, the columns and the weights rule.",
    )
    parser.add_argument("--config", type=Path, required=True, help="benchmark configuration (YAML)")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="output folder (default: the config's `output`)",
    )
    parser.add_argument(
        "--speed-only-without-weights",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run models whose pretrained weights are missing with random weights, as rows marked 'speed only, "
        "not pretrained' without quality values (default: the config's `speed_only_without_weights`)",
    )
    parser.add_argument("--only", nargs="+", default=[], metavar="TEXT", help="run only jobs whose name contains TEXT")
    parser.add_argument("--list", action="store_true", help="list the jobs, their weights and status, run nothing")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from finished jobs")
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=60.0,
        help="seconds between progress lines while a phase runs; 0 for none (default: %(default)s)",
    )
    return parser


def _list_jobs(config: "BenchmarkConfig", speed_only: bool | None) -> int:
    from .runner import existing_outcome, plan_jobs, prepare_weights

    prepare_weights(config)  # the list then shows the weights the run will find
    for index, planned in enumerate(plan_jobs(config, speed_only), start=1):
        outcome = existing_outcome(planned, config)
        print(f"[{index}] {planned.job.name}  key {planned.job.key}  {outcome.status}")
        print(f"      mode: {planned.mode}; weights: {planned.weights}")
        if outcome.message and outcome.status != "pending":
            print(f"      {outcome.message}")
    return 0


def _report_only(config: "BenchmarkConfig", speed_only: bool | None) -> int:
    from .report import write_report
    from .runner import existing_outcome, plan_jobs

    outcomes = [existing_outcome(planned, config) for planned in plan_jobs(config, speed_only)]
    for path in write_report(config, outcomes):
        print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``anomalib-dcam benchmark``.

    Returns:
        ``0`` when every job finished or was skipped for missing weights, ``1`` when a job failed, ``2`` for an
        invalid configuration or command line.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait for a network: weights come from local caches
    from .config import ConfigError, load_config

    try:
        config = load_config(args.config, args.output)
    except ConfigError as error:
        parser.error(str(error))
    speed_only = args.speed_only_without_weights  # None: the configuration's
    try:
        if args.list:
            return _list_jobs(config, speed_only)
        if args.report_only:
            return _report_only(config, speed_only)
        from .runner import run_benchmark

        return run_benchmark(config, speed_only, only=args.only, heartbeat=args.heartbeat)
    except ValueError as error:  # an unknown class path or constructor argument in the config
        print(f"anomalib-dcam benchmark: error: {error}")
        return 2
