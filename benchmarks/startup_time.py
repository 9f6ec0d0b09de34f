# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Start-up cost of the plugin's hook: ``python -c pass`` with and without ``anomalib_dcam_autoload.pth``.

The hook file is moved aside and back between runs, alternating the two cases so that machine load affects both
alike. Reports, in milliseconds, the median wall time and the median CPU time (user + system) of the interpreter
(CPU time is the steadier figure on a busy machine) and the median difference within pairs.

Example:
    python benchmarks/startup_time.py --pairs 300
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


def start_up_cost() -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one fresh ``python -c pass`` interpreter, in seconds."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit("python -c pass failed")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=300, help="interpreter pairs (one with, one without the hook)")
    args = parser.parse_args()

    hook = Path(sysconfig.get_paths()["purelib"]) / "anomalib_dcam_autoload.pth"
    if not hook.is_file():
        sys.exit(f"{hook} not found: install anomalib-dcam into this interpreter first")
    parked = hook.with_suffix(".pth.off")
    results: dict[str, list[tuple[float, float]]] = {"with hook": [], "without hook": []}
    for pair in range(args.pairs):
        # Alternate which case runs first, so that drift and caching favour neither.
        for case in ("with hook", "without hook") if pair % 2 == 0 else ("without hook", "with hook"):
            if case == "without hook":
                shutil.move(hook, parked)
            try:
                results[case].append(start_up_cost())
            finally:
                if case == "without hook":
                    shutil.move(parked, hook)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    for case, values in results.items():
        wall = statistics.median(value[0] for value in values) * 1000
        cpu = statistics.median(value[1] for value in values) * 1000
        print(f"{case:>13}: median wall {wall:.2f} ms, median CPU {cpu:.2f} ms ({len(values)} runs)")
    differences = [a[1] - b[1] for a, b in zip(results["with hook"], results["without hook"], strict=True)]
    print(f"CPU difference with - without, median of pairs: {statistics.median(differences) * 1000:+.2f} ms")


if __name__ == "__main__":
    main()
