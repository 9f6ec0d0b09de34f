# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Training speed of Dcam, with each speed option alone and all together, against anomalib's Stfpm as shipped.

Every (backbone, setting) trains in a fresh subprocess, one after the other in one run, so that no two trainings
share the CPU and each has its own peak memory. Each run trains ``--epochs`` epochs on the same ``--images``
training images (unified bottle + magnetic_tile by default, 256 px, batch 32) and validates on ``--val-images``
held-out images after every epoch. Reported separately:

- ``startup_s``: process start to the first training batch (imports, model, weights, data set-up);
- ``first_epoch_img_s``: training images per second in epoch 1, where the caches fill;
- ``train_img_s``: training images per second over epochs 2.., validation excluded (the steady state, what every
  further epoch costs);
- ``data_wait_s``: per epoch, the time the training loop waited for the data loader;
- ``val_img_s``: validation images per second;
- ``peak_rss_gb``: peak resident memory of the training process (data-loader workers not included).

Stfpm uses the offline lite0 ImageNet weights; with ``resnet18`` (no offline weights here) both models use random
teachers, which costs the same time. Results go to ``<output>/<backbone>/<setting>.json``; finished runs are skipped
on a rerun, so the benchmark resumes.

Example:
    python benchmarks/train_speed.py --backbones tf_efficientnet_lite0 resnet18
"""

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

PROCESS_START = time.perf_counter()

PYRAMIDS = {
    "tf_efficientnet_lite0": ["blocks.1", "blocks.2", "blocks.4"],
    "resnet18": ["layer1", "layer2", "layer3"],
}

# setting -> (model, Dcam speed options, trainer precision, data-loader workers)
SETTINGS: dict[str, tuple[str, dict, str, int]] = {
    "stfpm": ("Stfpm", {}, "32-true", 2),
    "dcam": ("Dcam", {}, "32-true", 2),
    "dcam_bf16": ("Dcam", {}, "bf16-mixed", 2),
    "dcam_teacher_cache": ("Dcam", {"teacher_cache": "memory"}, "32-true", 2),
    "dcam_channels_last": ("Dcam", {"channels_last": True}, "32-true", 2),
    "dcam_workers0": ("Dcam", {}, "32-true", 0),
    "dcam_all": ("Dcam", {"teacher_cache": "memory", "channels_last": True}, "bf16-mixed", 0),
    "dcam_fast": ("Dcam", {"teacher_cache": "memory"}, "bf16-mixed", 0),
    "dcam_all_fp32": ("Dcam", {"teacher_cache": "memory", "channels_last": True}, "32-true", 0),
}


def worker(args: argparse.Namespace) -> None:
    """Train one setting and write its timings as JSON."""
    import torch
    from anomalib.engine import Engine
    from lightning.pytorch import Callback, seed_everything
    from torch.utils.data import Subset

    from anomalib_dcam import Dcam
    from anomalib_dcam.data import MultiClassMVTec

    model_name, options, precision, num_workers = SETTINGS[args.setting]
    pre_trained = args.backbone == "tf_efficientnet_lite0"

    class Timer(Callback):
        def __init__(self) -> None:
            self.epochs: list[dict] = []
            self.startup_s: float | None = None

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._epoch_start = self._batch_end = time.perf_counter()
            self._wait = 0.0
            self._images = 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            now = time.perf_counter()
            if self.startup_s is None:
                self.startup_s = now - PROCESS_START
            self._wait += now - self._batch_end

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self._batch_end = time.perf_counter()
            self._images += batch.image.shape[0]

        def on_validation_epoch_start(self, trainer, pl_module) -> None:
            self._train_s = self._batch_end - self._epoch_start
            self._val_images = 0
            self._val_start = time.perf_counter()

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
            self._val_images += batch.image.shape[0]

        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            val_s = time.perf_counter() - self._val_start
            self.epochs.append(
                {
                    "train_s": self._train_s,
                    "images": self._images,
                    "data_wait_s": self._wait,
                    "val_s": val_s,
                    "val_images": self._val_images,
                },
            )

    seed_everything(0, workers=True)
    datamodule = MultiClassMVTec(
        root=args.root,
        categories=args.categories,
        train_batch_size=32,
        eval_batch_size=32,
        num_workers=num_workers,
        val_split_mode="from_train",
        val_split_ratio=0.2,
        seed=0,
    )
    layers = PYRAMIDS[args.backbone]
    if model_name == "Dcam":
        model = Dcam(backbone=args.backbone, layers=layers, pre_trained=pre_trained, **options)
    else:
        import timm
        from anomalib.models import Stfpm

        if pre_trained:
            model = Stfpm(backbone=args.backbone, layers=layers)
        else:  # speed only: no offline ImageNet weights for this backbone, so a random teacher like Dcam's
            create_model = timm.create_model
            timm.create_model = lambda *a, **k: create_model(*a, **{**k, "pretrained": False})
            try:
                model = Stfpm(backbone=args.backbone, layers=layers)
            finally:
                timm.create_model = create_model

    class FixedSubset(Callback):
        """Train on the same first ``--images`` training images (shuffled) and validate on ``--val-images``."""

        def setup(self, trainer, pl_module, stage) -> None:
            for name, count in (("train_data", args.images), ("val_data", args.val_images)):
                data = getattr(datamodule, name)
                subset = Subset(data, range(min(count, len(data))))
                subset.collate_fn = data.collate_fn
                subset.augmentations = data.augmentations
                setattr(datamodule, name, subset)

    timer = Timer()
    engine = Engine(
        max_epochs=args.epochs,
        default_root_dir=args.run_dir,
        logger=False,
        accelerator="cpu",
        devices=1,
        precision=precision,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[FixedSubset(), timer],
    )
    engine.fit(model=model, datamodule=datamodule)
    epochs = timer.epochs
    steady = epochs[1:] or epochs
    result = {
        "backbone": args.backbone,
        "setting": args.setting,
        "model": model_name,
        "options": options,
        "precision": precision,
        "num_workers": num_workers,
        "startup_s": round(timer.startup_s, 2),
        "first_epoch_img_s": epochs[0]["images"] / epochs[0]["train_s"],
        "train_img_s": sum(e["images"] for e in steady) / sum(e["train_s"] for e in steady),
        "data_wait_s": [round(e["data_wait_s"], 2) for e in epochs],
        "val_img_s": sum(e["val_images"] for e in epochs) / sum(e["val_s"] for e in epochs),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "epochs": epochs,
        "torch_threads": torch.get_num_threads(),
    }
    cache = getattr(model, "teacher_cache", None)
    if cache is not None:
        result["teacher_cache"] = {**dataclasses.asdict(cache.stats), "disabled_reason": cache.disabled_reason}
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(result, indent=2))


def main() -> None:
    """Run every setting in its own process, then print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data/industrial"))
    parser.add_argument("--categories", nargs="+", default=["bottle", "magnetic_tile"])
    parser.add_argument("--backbones", nargs="+", default=["tf_efficientnet_lite0", "resnet18"], choices=PYRAMIDS)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--images", type=int, default=96, help="training images per epoch")
    parser.add_argument("--val-images", type=int, default=64, help="validation images per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path("results/train_speed"))
    parser.add_argument("--worker", nargs=3, metavar=("BACKBONE", "SETTING", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    cache = args.output / "hf-cache"
    os.environ["HF_HUB_CACHE"] = str(cache.resolve())  # before huggingface_hub is imported
    os.environ["HF_HUB_OFFLINE"] = "1"
    if args.worker:
        args.backbone, args.setting, result = args.worker
        args.result = Path(result)
        args.run_dir = args.result.with_suffix("")
        worker(args)
        return

    from anomalib_dcam.weights import install_hf_cache

    install_hf_cache(cache)
    results = []
    # Alternate the settings backbone by backbone, so that a drift of the machine spreads over all of them.
    for backbone in args.backbones:
        for setting in args.settings:
            path = args.output / backbone / f"{setting}.json"
            if not path.is_file():
                print(f"[run] {backbone} {setting}", flush=True)
                command = [sys.executable, __file__, "--worker", backbone, setting, str(path)]
                command += ["--root", str(args.root), "--categories", *args.categories]
                command += ["--images", str(args.images), "--val-images", str(args.val_images)]
                command += ["--epochs", str(args.epochs), "--output", str(args.output)]
                subprocess.run(command, check=True)
            else:
                print(f"[skip] {backbone} {setting}: {path}", flush=True)
            results.append(json.loads(path.read_text()))

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    print(f"\n{platform.node()}, {os.cpu_count()} CPUs, {stamp}, {args.images} images x {args.epochs} epochs, 256 px\n")
    print(
        "| backbone | setting | precision | workers | train img/s | x Stfpm | 1st epoch img/s | val img/s "
        "| start-up s | peak RSS GB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for backbone in args.backbones:
        rows = [row for row in results if row["backbone"] == backbone]
        reference = next((row["train_img_s"] for row in rows if row["setting"] == "stfpm"), None)
        for row in rows:
            ratio = f"{row['train_img_s'] / reference:.2f}" if reference else "-"
            print(
                f"| {backbone} | {row['setting']} | {row['precision']} | {row['num_workers']} "
                f"| {row['train_img_s']:.2f} | {ratio} | {row['first_epoch_img_s']:.2f} | {row['val_img_s']:.1f} "
                f"| {row['startup_s']:.1f} | {row['peak_rss_gb']:.2f} |",
            )


if __name__ == "__main__":
    main()
