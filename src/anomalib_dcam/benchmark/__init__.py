# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Side-by-side benchmark of anomaly models: quality, training and inference speed, memory and model size.

``anomalib-dcam benchmark --config configs/benchmark_industrial.yaml`` trains every model of the configuration on
every datamodule with every seed and records, per job, the test metrics, the training time and throughput, the
inference latency and throughput of eager PyTorch and of OpenVINO FP32, FP16 and INT8, the peak memory of training
and inference, the parameter count and the size of every export. It writes ``results.csv``, ``per_category.csv``,
``results.md`` and PNG figures, and resumes where it stopped. docs/benchmarks.md has the details.

The heavy modules load lazily; importing this package costs nothing.
"""

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``anomalib-dcam benchmark`` (see :mod:`anomalib_dcam.benchmark.command`)."""
    from .command import main as command_main

    return command_main(argv)
