# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""One model for several categories against one model per category, with per-category metrics.

Every run uses the same backbone (``tf_efficientnet_lite0`` with the offline ImageNet weights), image size (256 px),
epochs and seed, and :class:`anomalib_dcam.callbacks.PerCategoryMetrics`. ``--selection held_out`` (the default) is
the DCAM paper's model selection: a seeded 20 % of the pooled training normals held out, the epoch with the lowest mean
anomaly score on them kept. ``--selection last_epoch`` trains on every training normal and tests the model after the
last epoch (the protocol of the 2026-11-21 one-class bottle table in docs/results.md).

- ``unified`` runs train one model on all ``--categories`` together;
- ``one_class`` runs train one model per category (the classic anomalib setting) and pool the rows.

``--speed fast`` (the default) trains every run with the shipped training-speed settings (docs/training_speed.md):
Dcam with its teacher-feature cache and channels-last, float32, no data-loader workers. ``--speed bf16`` adds bf16
mixed precision. ``--speed reference`` trains in float32, recomputing the teacher, with 2 loader workers (the
accuracy reference of those settings).

Each run writes ``per_category_metrics.{csv,json}`` and the per-image scores (written before any metric) into
``<output>/<data>_e<epochs>_s<seed>[_<speed>][_last_epoch]/<run>/``, and a record into ``<records>/`` with the same
layout: a small JSON file kept with the code (:mod:`anomalib_dcam.benchmark.records`) holding the fully resolved
settings (model, post-processor, datamodule and trainer arguments after defaults, seed, report options, package
versions), the commit and dirty flag, and the per-category rows, so that a multi-seed comparison can span runs made on
different days (``benchmarks/seeds.py`` summarises them). A run is skipped on a rerun only when its record holds exactly
the same settings; after a default changes, a run named after the defaults is trained again. ``--runs`` takes the
names of ``RUNS`` in ``runs.py`` (the ablation variants of Dcam included), each with the suffix ``:unified`` or
``:one_class``.

Example:
    python benchmarks/unified.py --categories bottle magnetic_tile --epochs 5 \
        --runs dcam:unified stfpm_lr0.1:unified stfpm_lr0.1:one_class
"""

import argparse
import platform
from datetime import datetime, timezone
from pathlib import Path

from runs import BACKBONE, RUNS, add_run_arguments, build_model, checkpoint_state_dict, offline_hf_cache

# Trainer, data-loader and Dcam settings of each --speed profile. "fast" matches the configs' defaults
# (docs/training_speed.md); "bf16" adds bf16 mixed precision; "reference" is float32, teacher recomputed, 2 workers.
SPEED_PROFILES: dict[str, dict] = {
    "fast": {"precision": "32-true", "num_workers": 0, "dcam": {"teacher_cache": "memory", "channels_last": True}},
    "bf16": {"precision": "bf16-mixed", "num_workers": 0, "dcam": {"teacher_cache": "memory", "channels_last": True}},
    "reference": {"precision": "32-true", "num_workers": 2, "dcam": {"teacher_cache": "off"}},
}


def run_folder(
    categories: list[str],
    epochs: int,
    seed: int,
    speed: str,
    of_epochs: int | None = None,
    selection: str = "held_out",
) -> str:
    """Name of the folder of one (data, epochs, seed, speed profile, model selection) combination.

    ``of_epochs`` names a milestone of a longer run: the model selected over its first ``epochs`` epochs.
    """
    suffix = ("" if speed == "fast" else f"_{speed}") + ("" if selection == "held_out" else f"_{selection}")
    longer = "" if of_epochs is None else f"of{of_epochs}"
    return f"{'+'.join(categories)}_e{epochs}{longer}_s{seed}{suffix}"


# Model selection of --selection: the datamodule's validation split and what the record says about it.
SELECTIONS: dict[str, tuple[dict, str]] = {
    "held_out": (
        {"val_split_mode": "from_train", "val_split_ratio": 0.2},
        "HeldOutNormalCheckpoint (lowest mean score on the held-out 20 % of training normals)",
    ),
    # Validation on the test set only feeds anomalib's own checkpoint; nothing is selected on it.
    "last_epoch": ({"val_split_mode": "same_as_test"}, "last epoch (all training normals; validation = test set)"),
}


def build_run(
    run: str,
    categories: list[str],
    root: Path,
    epochs: int,
    seed: int,
    speed: str,
    global_pixel_metrics: bool,
    selection: str = "held_out",
) -> tuple[object, object, dict, dict]:
    """Build one run's model and datamodule (after seeding) and the resolved settings that decide its result."""
    from lightning.pytorch import seed_everything

    from anomalib_dcam.benchmark.records import run_settings
    from anomalib_dcam.data import MultiClassMVTec

    seed_everything(seed, workers=True)
    profile = SPEED_PROFILES[speed]
    split, model_selection = SELECTIONS[selection]
    datamodule = MultiClassMVTec(
        root=root,
        categories=categories,
        train_batch_size=32,
        eval_batch_size=32,
        num_workers=profile["num_workers"],
        seed=seed,
        **split,
    )
    trainer = {"max_epochs": epochs, "accelerator": "cpu", "devices": 1, "precision": profile["precision"]}
    model = build_model(run, dcam_options=profile["dcam"])
    settings = run_settings(
        model,
        datamodule,
        trainer,
        seed,
        run=run,
        speed=speed,
        model_selection=model_selection,
        report={"callback": "PerCategoryMetrics", "global_pixel_metrics": global_pixel_metrics},
    )
    return model, datamodule, trainer, settings


def train_and_test(
    model: object,
    datamodule: object,
    trainer: dict,
    run_dir: Path,
    global_pixel_metrics: bool,
    milestones: tuple[int, ...] = (),
    selection: str = "held_out",
) -> dict[int, list[dict]]:
    """Train a built run, test the selected model (see ``SELECTIONS``) and return its per-category rows.

    The per-image scores are written (``per_category_metrics_scores.csv``) before any metric is computed. With
    ``milestones``, the model selected over the first ``m`` epochs of each milestone is tested too (into
    ``<run_dir>/epoch<m>/``): what an ``m``-epoch run gives, from the same run.

    Returns:
        ``{epochs: rows}`` for the whole run and each milestone.
    """
    from anomalib_dcam.benchmark.training import timed_fit, timed_test
    from anomalib_dcam.callbacks import HeldOutNormalCheckpoint, PerCategoryMetrics

    report = PerCategoryMetrics(output_dir=run_dir, global_pixel_metrics=global_pixel_metrics, save_scores=True)
    checkpoint = HeldOutNormalCheckpoint(milestones=milestones)
    # Without it, anomalib's own checkpoint keeps the last epoch, and the model in memory is tested.
    callbacks = [checkpoint, report] if selection == "held_out" else [report]
    engine, fit_seconds = timed_fit(model, datamodule, run_dir, callbacks, **trainer)
    timed_test(engine, model, datamodule)
    results = {trainer["max_epochs"]: [{**row, "fit_seconds": round(fit_seconds, 1)} for row in report.results]}
    for epochs in milestones:
        model.load_state_dict(checkpoint_state_dict(model, checkpoint.milestone_path(epochs)))
        report.output_dir = run_dir / f"epoch{epochs}"
        timed_test(engine, model, datamodule)
        results[epochs] = [dict(row) for row in report.results]
    return results


def record_rows(record: dict | list) -> list[dict]:
    """The per-category rows of a record (records written before settings were stored are plain row lists)."""
    return record["results"] if isinstance(record, dict) else record


def main() -> None:
    """Run the requested settings and print a Markdown table per category."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--runs", nargs="+", default=["dcam:unified", "stfpm_lr0.1:unified", "stfpm_lr0.1:one_class"])
    parser.add_argument("--speed", choices=sorted(SPEED_PROFILES), default="fast")
    parser.add_argument("--selection", choices=sorted(SELECTIONS), default="held_out")
    parser.add_argument("--output", type=Path, default=Path("results/unified"))
    parser.add_argument("--records", type=Path, default=Path(__file__).parent / "records" / "unified")
    parser.add_argument(
        "--global-pixel-metrics",
        action="store_true",
        help="also pool every pixel of the categories with masks for the report's global row (minutes, GBs)",
    )
    parser.add_argument(
        "--milestones",
        type=int,
        nargs="+",
        default=[],
        help="epoch counts below --epochs at which the model selected so far is tested too (a learning curve from "
        "one run, unified runs only); recorded under <data>_e<m>of<epochs>_s<seed>",
    )
    args = parser.parse_args()
    milestones = tuple(sorted(set(args.milestones)))
    if any(not 0 < epochs < args.epochs for epochs in milestones):
        parser.error(f"--milestones {list(milestones)}: each must be between 1 and --epochs - 1 ({args.epochs - 1})")
    if milestones and any(not spec.endswith(":unified") for spec in args.runs):
        parser.error("--milestones applies to unified runs only; give <run>:unified runs")
    if milestones and args.selection != "held_out":
        parser.error("--milestones tests the held-out selection; leave --selection at held_out")
    for spec in args.runs:
        name, _, setting = spec.partition(":")
        if name not in RUNS or setting not in {"unified", "one_class"}:
            parser.error(f"--runs {spec!r}: expected <run>:unified or <run>:one_class with <run> in {sorted(RUNS)}")

    folder = run_folder(args.categories, args.epochs, args.seed, args.speed, selection=args.selection)
    output, records = args.output / folder, args.records / folder
    offline_hf_cache(args.output)  # before the imports below, which import huggingface_hub
    from anomalib_dcam.benchmark.records import load_matching, write_record
    from anomalib_dcam.benchmark.report import QUALITY_METRICS, column_mean, markdown_table

    table: dict[str, list[dict]] = {}
    for spec in args.runs:
        name, _, setting = spec.partition(":")
        run_dir = output / f"{name}_{setting}"
        record_path = records / f"{name}_{setting}.json"
        groups = [args.categories] if setting == "unified" else [[category] for category in args.categories]
        built = [
            build_run(
                name, group, args.root, args.epochs, args.seed, args.speed, args.global_pixel_metrics, args.selection
            )
            for group in groups
        ]
        settings = {"setting": setting, "runs": [settings for *_, settings in built]}
        if milestones:
            settings["milestones"] = list(milestones)
        milestone_records = {
            epochs: (
                args.records / run_folder(args.categories, epochs, args.seed, args.speed, of_epochs=args.epochs),
                {**settings, "evaluated_after_epochs": epochs},
            )
            for epochs in milestones
        }
        record = load_matching(record_path, settings)
        if record is not None and all(
            load_matching(folder / f"{name}_{setting}.json", wanted) for folder, wanted in milestone_records.values()
        ):
            print(f"[skip] {spec}: recorded with the same settings in {record_path}", flush=True)
            table[spec] = record_rows(record)
            continue
        print(f"[run] {spec}: {args.epochs} epochs on {', '.join(args.categories)}", flush=True)
        rows = []
        for group, (model, datamodule, trainer, _) in zip(groups, built, strict=True):
            folder = run_dir if setting == "unified" else run_dir / group[0]
            results = train_and_test(
                model, datamodule, trainer, folder, args.global_pixel_metrics, milestones, args.selection
            )
            for epochs, (milestone_folder, wanted) in milestone_records.items():
                write_record(milestone_folder / f"{name}_{setting}.json", wanted, results[epochs])
            group_rows = results[args.epochs]
            rows += group_rows if setting == "unified" else [row for row in group_rows if row["category"] == group[0]]
        if setting == "one_class":
            means = {metric: column_mean(rows, metric) for metric in QUALITY_METRICS}
            rows.append({"category": "mean", **means, "fit_seconds": sum(row["fit_seconds"] for row in rows)})
        write_record(record_path, settings, rows)
        table[spec] = rows

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    print(
        f"\n{BACKBONE}, 256 px, {args.epochs} epochs, seed {args.seed}, {args.speed}, {args.selection}, "
        f"{platform.node()}, {stamp}"
    )
    columns = [*args.categories, "mean"]
    for metric in QUALITY_METRICS:
        body = []
        for spec, rows in table.items():
            by_category = {row["category"]: row for row in rows}
            values = [by_category.get(column, {}).get(metric) for column in columns]
            body.append([spec, *("-" if value is None else f"{value:.3f}" for value in values)])
        print(f"\n{metric}\n")
        print(markdown_table(["run", *columns], body))


if __name__ == "__main__":
    main()
