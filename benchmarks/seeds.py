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
import statistics
from pathlib import Path

from runs import add_run_arguments
from unified import record_rows, run_folder

from anomalib_dcam.benchmark.report import QUALITY_METRICS, markdown_table, mean_std, seed_tables
from anomalib_dcam.callbacks.per_category import is_missing


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
    add_run_arguments(parser, several_seeds=True, root=False)
    parser.add_argument("--baseline", default="stfpm_lr0.1:unified")
    parser.add_argument("--rows", nargs="+", default=["dcam:unified"])
    parser.add_argument("--records", type=Path, default=Path(__file__).parent / "records" / "unified")
    parser.add_argument(
        "--of-epochs",
        type=int,
        default=None,
        help="read the --epochs milestone of runs this long (unified.py --milestones), e.g. --epochs 5 --of-epochs 20",
    )
    parser.add_argument(
        "--milestone-seeds",
        type=int,
        nargs="+",
        default=None,
        help="with --of-epochs: only these seeds are read from the milestones, the others from runs of --epochs "
        "epochs (a milestone is the model a run of --epochs epochs selects: no schedule depends on the length)",
    )
    args = parser.parse_args()
    try:
        for spec in [args.baseline, *args.rows]:
            parse_row(spec)
    except ValueError as error:
        parser.error(str(error))

    if args.milestone_seeds and args.of_epochs is None:
        parser.error("--milestone-seeds needs --of-epochs (the length of the runs whose milestones are read)")

    def of_epochs(seed: int) -> int | None:
        return args.of_epochs if args.milestone_seeds is None or seed in args.milestone_seeds else None

    columns = [*args.categories, "mean"]
    specs = [args.baseline, *[row for row in args.rows if row != args.baseline]]
    recorded: dict[str, dict[int, dict[str, dict]]] = {}  # spec -> seed -> rows by category, recorded seeds only
    for spec in specs:
        loaded = {
            seed: load(args.records, args.categories, args.epochs, seed, spec, of_epochs(seed)) for seed in args.seeds
        }
        recorded[spec] = {seed: rows for seed, rows in loaded.items() if rows is not None}
        missing = [seed for seed, rows in loaded.items() if rows is None]
        if missing:
            print(f"note: {spec} has no record for seed(s) {missing}; its cells use the other seeds")

    milestones = "" if args.of_epochs is None else f" (seeds {args.milestone_seeds or args.seeds}: of {args.of_epochs})"
    print(f"\n{'+'.join(args.categories)}, {args.epochs} epochs{milestones}, seeds {args.seeds}")
    for metric in QUALITY_METRICS:
        values = {
            spec: {seed: {column: rows[column][metric] for column in columns} for seed, rows in recorded[spec].items()}
            for spec in specs
        }
        summary, paired = seed_tables(values, columns, args.baseline, per_seed_column="mean")
        print(f"\n{metric}: mean ± std over seeds (n seeds)\n\n{summary}")
        print(f"\n{metric}: paired difference to {args.baseline}, per seed (mean ± std over the paired seeds)\n")
        print(paired)
        print(f"\n{metric}: paired difference of the mean over the other categories, leaving each one out\n")
        body = [
            [
                spec,
                *(
                    leave_one_out(recorded[spec], recorded[args.baseline], args.categories, left_out, metric)
                    for left_out in args.categories
                ),
            ]
            for spec in specs[1:]
        ]
        print(markdown_table(["row", *(f"without {category}" for category in args.categories)], body))


def leave_one_out(
    rows: dict[int, dict], baseline: dict[int, dict], categories: list[str], left_out: str, metric: str
) -> str:
    """``mean ± std`` over the paired seeds of the difference of the mean over every category but ``left_out``.

    Does a row's lead depend on one category? Categories where either row leaves the metric undefined (pixel metrics
    of a category with image labels only) are not in the means.
    """
    differences = []
    for seed in rows.keys() & baseline.keys():
        pairs = [
            (rows[seed][category][metric], baseline[seed][category][metric])
            for category in categories
            if category != left_out
            and not is_missing(rows[seed][category][metric])
            and not is_missing(baseline[seed][category][metric])
        ]
        if pairs:
            differences.append(statistics.fmean(value - reference for value, reference in pairs))
    return mean_std(differences, signed=True)


if __name__ == "__main__":
    main()
