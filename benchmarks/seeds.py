# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Multi-seed summary of ``benchmarks/unified.py`` runs: mean ± std over seeds and the per-seed paired difference.

Reads the rows that ``unified.py`` records (``benchmarks/records/unified/`` by default), so runs trained on different
days are summarised together; nothing is trained here. A row is ``<run>:<setting>[@<speed>]`` (speed
profile ``fast`` when omitted), e.g. ``dcam:unified@reference``. Every row is compared seed by seed with ``--baseline``:
the paired difference removes what the seed moves both rows by (same data split, same held-out images).

Example:
    python benchmarks/seeds.py --epochs 5 --seeds 0 1 2 --baseline stfpm_lr0.1:unified \
        --rows dcam:unified dcam_denoise_p0.5:unified
"""

import argparse
import json
from pathlib import Path

from unified import record_rows, run_folder

from anomalib_dcam.benchmark.report import QUALITY_METRICS, mean_std


def parse_row(spec: str) -> tuple[str, str]:
    """``(<run>_<setting>, speed)`` of a row spec."""
    run, _, speed = spec.partition("@")
    name, _, setting = run.partition(":")
    if not name or setting not in {"unified", "one_class"}:
        msg = f"row {spec!r}: expected <run>:unified or <run>:one_class, optionally followed by @<speed>"
        raise ValueError(msg)
    return f"{name}_{setting}", speed or "fast"


def load(
    records: Path, categories: list[str], epochs: int, seed: int, spec: str, of_epochs: int | None = None
) -> dict[str, dict] | None:
    """Rows of one (row, seed) by category, or ``None`` when that run has not been recorded yet."""
    run, speed = parse_row(spec)
    path = records / run_folder(categories, epochs, seed, speed, of_epochs) / f"{run}.json"
    if not path.is_file():
        return None
    return {row["category"]: row for row in record_rows(json.loads(path.read_text()))}


def main() -> None:
    """Print one table per metric: every row's mean ± std over seeds, then its paired difference to the baseline."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--categories", nargs="+", default=["bottle", "magnetic_tile"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--baseline", default="stfpm_lr0.1:unified")
    parser.add_argument("--rows", nargs="+", default=["dcam:unified"])
    parser.add_argument("--records", type=Path, default=Path(__file__).parent / "records" / "unified")
    parser.add_argument(
        "--of-epochs",
        type=int,
        default=None,
        help="read the --epochs milestone of runs this long (unified.py --milestones), e.g. --epochs 5 --of-epochs 20",
    )
    args = parser.parse_args()
    try:
        for spec in [args.baseline, *args.rows]:
            parse_row(spec)
    except ValueError as error:
        parser.error(str(error))

    columns = [*args.categories, "mean"]
    specs = [args.baseline, *[row for row in args.rows if row != args.baseline]]
    loaded = {
        spec: {
            seed: load(args.records, args.categories, args.epochs, seed, spec, args.of_epochs) for seed in args.seeds
        }
        for spec in specs
    }
    for spec in specs:
        missing = [seed for seed, rows in loaded[spec].items() if rows is None]
        if missing:
            print(f"note: {spec} has no record for seed(s) {missing}; its cells use the other seeds")

    print(f"\n{'+'.join(args.categories)}, {args.epochs} epochs, seeds {args.seeds}")
    for metric in QUALITY_METRICS:
        print(f"\n{metric}: mean ± std over seeds (n seeds)\n")
        print("| row | n | " + " | ".join(columns) + " |")
        print("|---" * (len(columns) + 2) + "|")
        for spec in specs:
            seeds = [seed for seed, rows in loaded[spec].items() if rows is not None]
            cells = [mean_std([loaded[spec][seed][column][metric] for seed in seeds]) for column in columns]
            print(f"| {spec} | {len(seeds)} | " + " | ".join(cells) + " |")
        print(f"\n{metric}: paired difference to {args.baseline}, per seed (mean ± std over the paired seeds)\n")
        print("| row | seeds | " + " | ".join(columns) + " | per seed (mean) |")
        print("|---" * (len(columns) + 3) + "|")
        for spec in specs[1:]:
            paired = [
                seed
                for seed in args.seeds
                if loaded[spec][seed] is not None and loaded[args.baseline][seed] is not None
            ]
            differences = {
                column: [
                    loaded[spec][seed][column][metric] - loaded[args.baseline][seed][column][metric] for seed in paired
                ]
                for column in columns
            }
            pairs = zip(paired, differences["mean"], strict=True)
            per_seed = ", ".join(f"s{seed} {value:+.3f}" for seed, value in pairs)
            cells = [mean_std(differences[column], signed=True) for column in columns]
            print(f"| {spec} | {len(paired)} | " + " | ".join(cells) + f" | {per_seed} |")


if __name__ == "__main__":
    main()
