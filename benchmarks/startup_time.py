# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Start-up cost of the plugin's hook: ``python -c pass`` with and without ``anomalib_dcam_autoload.pth``.

The hook file is moved aside and back between rounds, interleaving the two cases so that machine load affects both
alike. Prints the median of each round and the overall medians, in milliseconds.

Example:
    python benchmarks/startup_time.py --runs 60 --rounds 5
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path


def median_start_up(runs: int) -> float:
    """Median wall time of ``runs`` fresh ``python -c pass`` interpreters, in seconds."""
    durations = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=60, help="interpreters per round and case")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    hook = Path(sysconfig.get_paths()["purelib"]) / "anomalib_dcam_autoload.pth"
    if not hook.is_file():
        sys.exit(f"{hook} not found: install anomalib-dcam into this interpreter first")
    parked = hook.with_suffix(".pth.off")
    results: dict[str, list[float]] = {"with hook": [], "without hook": []}
    for _ in range(args.rounds):
        results["with hook"].append(median_start_up(args.runs))
        shutil.move(hook, parked)
        try:
            results["without hook"].append(median_start_up(args.runs))
        finally:
            shutil.move(parked, hook)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    for case, values in results.items():
        rounds = ", ".join(f"{value * 1000:.1f}" for value in values)
        print(f"{case:>13}: median {statistics.median(values) * 1000:.1f} ms (rounds: {rounds})")


if __name__ == "__main__":
    main()
