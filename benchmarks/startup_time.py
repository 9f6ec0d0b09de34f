# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Start-up cost of the plugin's hook: ``python -c pass`` with and without ``anomalib_dcam_autoload.pth``.

The hook file is moved aside and back between rounds, interleaving the two cases so that machine load affects both
alike. Reports, in milliseconds, the median wall time and the median CPU time (user + system) of the interpreter;
CPU time is the steadier figure on a busy machine.

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


def median_start_up(runs: int) -> tuple[float, float]:
    """Median wall time and median CPU time of ``runs`` fresh ``python -c pass`` interpreters, in seconds."""
    wall_times, cpu_times = [], []
    for _ in range(runs):
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-c", "pass"])
        _, status, usage = os.wait4(process.pid, 0)
        wall_times.append(time.perf_counter() - start)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            sys.exit(f"python -c pass failed with exit code {process.returncode}")
        cpu_times.append(usage.ru_utime + usage.ru_stime)
    return statistics.median(wall_times), statistics.median(cpu_times)


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
    results: dict[str, list[tuple[float, float]]] = {"with hook": [], "without hook": []}
    for _ in range(args.rounds):
        results["with hook"].append(median_start_up(args.runs))
        shutil.move(hook, parked)
        try:
            results["without hook"].append(median_start_up(args.runs))
        finally:
            shutil.move(parked, hook)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    for case, values in results.items():
        wall = statistics.median(value[0] for value in values) * 1000
        cpu = statistics.median(value[1] for value in values) * 1000
        rounds = ", ".join(f"{value[1] * 1000:.1f}" for value in values)
        print(f"{case:>13}: wall {wall:.1f} ms, CPU {cpu:.1f} ms (CPU per round: {rounds})")


if __name__ == "__main__":
    main()
