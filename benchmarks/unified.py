# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""One model for several categories against one model per category, with per-category metrics.

Every run uses the same backbone (``tf_efficientnet_lite0`` with the offline ImageNet weights), image size (256 px),
epochs and seed, the DCAM paper's model selection (a seeded 20 % of the pooled training normals held out; the epoch
with the lowest mean anomaly score on them is kept) and :class:`anomalib_dcam.callbacks.PerCategoryMetrics`.

- ``unified`` runs train one model on all ``--categories`` together;
- ``one_class`` runs train one model per category (the classic anomalib setting) and pool the rows.

Each run writes ``per_category_metrics.{csv,json}`` into ``<output>/<run>/``; finished runs are skipped on a rerun.
``--runs`` takes the names of ``RUNS`` in ``dcam_vs_stfpm.py`` (the ablation variants of Dcam included), each with
the suffix ``:unified`` or ``:one_class``.

Example:
    python benchmarks/unified.py --categories bottle magnetic_tile --epochs 5 \
        --runs dcam:unified stfpm_lr0.1:unified stfpm_lr0.1:one_class
"""

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

from dcam_vs_stfpm import BACKBONE, RUNS, build_model

METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "image_F1Max")


def train_and_test(run: str, categories: list[str], root: Path, epochs: int, seed: int, run_dir: Path) -> list[dict]:
    """Train one model on ``categories`` and return its per-category rows."""
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_dcam.callbacks import HeldOutNormalCheckpoint, PerCategoryMetrics
    from anomalib_dcam.data import MultiClassMVTec

    seed_everything(seed, workers=True)
    datamodule = MultiClassMVTec(
        root=root,
        categories=categories,
        train_batch_size=32,
        eval_batch_size=32,
        num_workers=2,
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
        callbacks=[HeldOutNormalCheckpoint(), report],
    )
    model = build_model(run)
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
    parser.add_argument("--output", type=Path, default=Path("results/unified"))
    args = parser.parse_args()
    for spec in args.runs:
        name, _, setting = spec.partition(":")
        if name not in RUNS or setting not in {"unified", "one_class"}:
            parser.error(f"--runs {spec!r}: expected <run>:unified or <run>:one_class with <run> in {sorted(RUNS)}")

    output = args.output / f"{'+'.join(args.categories)}_e{args.epochs}_s{args.seed}"
    cache = args.output / "hf-cache"
    os.environ["HF_HUB_CACHE"] = str(cache.resolve())  # before huggingface_hub is imported
    os.environ["HF_HUB_OFFLINE"] = "1"
    from anomalib_dcam.weights import install_hf_cache

    install_hf_cache(cache)

    table: dict[str, list[dict]] = {}
    for spec in args.runs:
        name, _, setting = spec.partition(":")
        run_dir = output / f"{name}_{setting}"
        done = run_dir / "rows.json"
        if done.is_file():
            print(f"[skip] {spec}: already in {done}", flush=True)
            table[spec] = json.loads(done.read_text())
            continue
        print(f"[run] {spec}: {args.epochs} epochs on {', '.join(args.categories)}", flush=True)
        if setting == "unified":
            rows = train_and_test(name, args.categories, args.root, args.epochs, args.seed, run_dir)
        else:
            rows = []
            for category in args.categories:
                category_rows = train_and_test(name, [category], args.root, args.epochs, args.seed, run_dir / category)
                rows += [row for row in category_rows if row["category"] == category]
            means = {metric: sum(row[metric] for row in rows) / len(rows) for metric in METRICS}
            rows.append({"category": "mean", **means, "fit_seconds": sum(row["fit_seconds"] for row in rows)})
        run_dir.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(rows, indent=2))
        table[spec] = rows

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    print(f"\n{BACKBONE}, 256 px, {args.epochs} epochs, seed {args.seed}, {platform.node()}, {stamp}")
    for metric in METRICS:
        print(f"\n{metric}\n\n| run | " + " | ".join([*args.categories, "mean"]) + " |")
        print("|---" * (len(args.categories) + 2) + "|")
        for spec, rows in table.items():
            by_category = {row["category"]: row for row in rows}
            values = [by_category.get(category, {}).get(metric) for category in [*args.categories, "mean"]]
            print(f"| {spec} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in values) + " |")


if __name__ == "__main__":
    main()
