# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""One model for several categories against one model per category, with per-category metrics.

Every run uses the same backbone (``tf_efficientnet_lite0`` with the offline ImageNet weights), image size (256 px),
epochs and seed, the DCAM paper's model selection (a seeded 20 % of the pooled training normals held out; the epoch
with the lowest mean anomaly score on them is kept) and :class:`anomalib_dcam.callbacks.PerCategoryMetrics`.

- ``unified`` runs train one model on all ``--categories`` together;
- ``one_class`` runs train one model per category (the classic anomalib setting) and pool the rows.

``--speed fast`` (the default) trains every run with the shipped training-speed settings (docs/training_speed.md):
Dcam with its teacher-feature cache and channels-last, float32, no data-loader workers. ``--speed bf16`` adds bf16
mixed precision. ``--speed reference`` trains in float32, recomputing the teacher, with 2 loader workers (the
accuracy reference of those settings).

Each run writes ``per_category_metrics.{csv,json}`` into ``<output>/<data>_e<epochs>_s<seed>[_<speed>]/<run>/``
and its rows into ``<records>/`` with the same layout (small JSON files meant to be kept with the code, so that a
multi-seed comparison can span several working sessions; ``benchmarks/seeds.py`` summarises them). Finished runs,
found in either place, are skipped on a rerun. ``--runs`` takes the names of ``RUNS`` in ``dcam_vs_stfpm.py`` (the
ablation variants of Dcam included), each with the suffix ``:unified`` or ``:one_class``.

Example:
    python benchmarks/unified.py --categories bottle magnetic_tile --epochs 5 \
        --runs dcam:unified stfpm_lr0.1:unified stfpm_lr0.1:one_class
"""

import argparse
import json
import os
import platform
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from dcam_vs_stfpm import BACKBONE, RUNS, build_model

METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "image_F1Max")

# Trainer, data-loader and Dcam settings of each --speed profile. "fast" matches the configs' defaults
# (docs/training_speed.md); "bf16" adds bf16 mixed precision; "reference" is float32, teacher recomputed, 2 workers.
SPEED_PROFILES: dict[str, dict] = {
    "fast": {"precision": "32-true", "num_workers": 0, "dcam": {"teacher_cache": "memory", "channels_last": True}},
    "bf16": {"precision": "bf16-mixed", "num_workers": 0, "dcam": {"teacher_cache": "memory", "channels_last": True}},
    "reference": {"precision": "32-true", "num_workers": 2, "dcam": {}},
}


def run_folder(categories: list[str], epochs: int, seed: int, speed: str) -> str:
    """Name of the folder of one (data, epochs, seed, speed profile) combination."""
    suffix = "" if speed == "fast" else f"_{speed}"
    return f"{'+'.join(categories)}_e{epochs}_s{seed}{suffix}"


def train_and_test(
    run: str,
    categories: list[str],
    root: Path,
    epochs: int,
    seed: int,
    run_dir: Path,
    speed: str,
) -> list[dict]:
    """Train one model on ``categories`` with the ``speed`` profile and return its per-category rows."""
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_dcam.callbacks import HeldOutNormalCheckpoint, PerCategoryMetrics
    from anomalib_dcam.data import MultiClassMVTec

    seed_everything(seed, workers=True)
    profile = SPEED_PROFILES[speed]
    datamodule = MultiClassMVTec(
        root=root,
        categories=categories,
        train_batch_size=32,
        eval_batch_size=32,
        num_workers=profile["num_workers"],
        val_split_mode="from_train",
        val_split_ratio=0.2,
        seed=seed,
    )
    report = PerCategoryMetrics(output_dir=run_dir, global_pixel_metrics=len(categories) > 1)
    engine = Engine(
        max_epochs=epochs,
        default_root_dir=run_dir,
        logger=False,
        accelerator="cpu",
        devices=1,
        precision=profile["precision"],
        callbacks=[HeldOutNormalCheckpoint(), report],
    )
    model = build_model(run, dcam_options=profile["dcam"])
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start
    engine.test(model=model, datamodule=datamodule, verbose=False)
    return [{**row, "fit_seconds": round(fit_seconds, 1)} for row in report.results]


def main() -> None:
    """Run the requested settings and print a Markdown table per category."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data/industrial"))
    parser.add_argument("--categories", nargs="+", default=["bottle", "magnetic_tile"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", nargs="+", default=["dcam:unified", "stfpm_lr0.1:unified", "stfpm_lr0.1:one_class"])
    parser.add_argument("--speed", choices=sorted(SPEED_PROFILES), default="fast")
    parser.add_argument("--output", type=Path, default=Path("results/unified"))
    parser.add_argument("--records", type=Path, default=Path(__file__).parent / "records" / "unified")
    args = parser.parse_args()
    for spec in args.runs:
        name, _, setting = spec.partition(":")
        if name not in RUNS or setting not in {"unified", "one_class"}:
            parser.error(f"--runs {spec!r}: expected <run>:unified or <run>:one_class with <run> in {sorted(RUNS)}")

    folder = run_folder(args.categories, args.epochs, args.seed, args.speed)
    output, records = args.output / folder, args.records / folder
    cache = args.output / "hf-cache"
    os.environ["HF_HUB_CACHE"] = str(cache.resolve())  # before huggingface_hub is imported
    os.environ["HF_HUB_OFFLINE"] = "1"
    from anomalib_dcam.weights import install_hf_cache

    install_hf_cache(cache)

    table: dict[str, list[dict]] = {}
    for spec in args.runs:
        name, _, setting = spec.partition(":")
        run_dir = output / f"{name}_{setting}"
        done, record = run_dir / "rows.json", records / f"{name}_{setting}.json"
        finished = next((path for path in (record, done) if path.is_file()), None)
        if finished is not None:
            print(f"[skip] {spec}: already in {finished}", flush=True)
            table[spec] = json.loads(finished.read_text())
            if not record.is_file():
                record.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(finished, record)
            continue
        print(f"[run] {spec}: {args.epochs} epochs on {', '.join(args.categories)}", flush=True)
        if setting == "unified":
            rows = train_and_test(name, args.categories, args.root, args.epochs, args.seed, run_dir, args.speed)
        else:
            rows = []
            for category in args.categories:
                category_rows = train_and_test(
                    name, [category], args.root, args.epochs, args.seed, run_dir / category, args.speed
                )
                rows += [row for row in category_rows if row["category"] == category]
            means = {metric: sum(row[metric] for row in rows) / len(rows) for metric in METRICS}
            rows.append({"category": "mean", **means, "fit_seconds": sum(row["fit_seconds"] for row in rows)})
        run_dir.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(rows, indent=2))
        record.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(done, record)
        table[spec] = rows

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    print(f"\n{BACKBONE}, 256 px, {args.epochs} epochs, seed {args.seed}, {args.speed}, {platform.node()}, {stamp}")
    for metric in METRICS:
        print(f"\n{metric}\n\n| run | " + " | ".join([*args.categories, "mean"]) + " |")
        print("|---" * (len(args.categories) + 2) + "|")
        for spec, rows in table.items():
            by_category = {row["category"]: row for row in rows}
            values = [by_category.get(category, {}).get(metric) for category in [*args.categories, "mean"]]
            print(f"| {spec} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in values) + " |")


if __name__ == "__main__":
    main()
