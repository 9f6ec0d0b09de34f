# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Training speed of Dcam, with each speed option alone and all together, against anomalib's Stfpm as shipped.

Every (backbone, setting) trains in a fresh subprocess, one after the other in one run, so that no two trainings
share the CPU and each has its own peak memory. Each run trains ``--epochs`` epochs on the same ``--images``
training images (unified bottle + magnetic_tile by default, 256 px, batch 32) and validates on ``--val-images``
held-out images after every epoch. The epochs are timed by the package's
:class:`~anomalib_dcam.benchmark.callbacks.TrainingMonitor`, which also times ``train_images_per_s`` of
``anomalib-dcam benchmark``. Reported separately:

- ``startup_s``: process start to the first training batch (imports, model, weights, data set-up);
- ``first_epoch_img_s``: training images per second in epoch 1, where the caches fill;
- ``train_img_s``: training images per second over epochs 2.., validation excluded (the steady state, what every
  further epoch costs);
- ``data_wait_s``: per epoch, the time the training loop waited for the data loader;
- ``val_img_s``: validation images per second;
- ``peak_rss_gb``: peak resident memory of the training process (data-loader workers not included);
- ``step_split``: Dcam only, the share of the steady-state training loop spent in the teacher or its cache, the
  synthetic defects, the student's forward pass, the loss, waiting for data, and the rest (backward, optimiser,
  Lightning).

Stfpm uses the offline lite0 ImageNet weights; with ``resnet18`` (no offline weights here) both models use random
teachers, which costs the same time. Each setting writes a record (:mod:`anomalib_dcam.benchmark.records`: the
resolved model, datamodule and trainer settings, versions, commit) to ``<output>/<backbone>/<setting>.json``; a
setting is trained again unless its record holds exactly the same settings, so the benchmark resumes and a record
never outlives the defaults it measured.

Example:
    python benchmarks/train_speed.py --backbones tf_efficientnet_lite0 resnet18
"""

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from runs import offline_hf_cache

PROCESS_START = time.perf_counter()

PYRAMIDS = {
    "tf_efficientnet_lite0": ["blocks.1", "blocks.2", "blocks.4"],
    "resnet18": ["layer1", "layer2", "layer3"],
}

# setting -> (model, Dcam options, trainer precision, data-loader workers). Every option that decides the speed is
# spelt out, so a record keeps its meaning when a default changes; "dcam" alone is a plain Dcam(), whatever the
# defaults are (its record stores them resolved).
SETTINGS: dict[str, tuple[str, dict, str, int]] = {
    "stfpm": ("Stfpm", {}, "32-true", 2),
    # What `anomalib train --model Dcam` gives: the automatic teacher cache and the defect bank, denoising on.
    "dcam": ("Dcam", {}, "32-true", 2),
    # The configs' training settings (configs/*.yaml): cache in memory, channels-last, no loader workers.
    "dcam_config": ("Dcam", {"teacher_cache": "memory", "channels_last": True}, "32-true", 0),
    # A plain Dcam() where the automatic cache cannot apply (e.g. random training augmentations).
    "dcam_uncached": ("Dcam", {"teacher_cache": "off"}, "32-true", 2),
    # A plain Dcam() before the automatic cache and the defect bank (anomalib's per-image Perlin generator).
    "dcam_uncached_anomalib_defects": (
        "Dcam",
        {"teacher_cache": "off", "synthetic_anomaly_generator": "anomalib"},
        "32-true",
        2,
    ),
    # The same with the configs' settings: what the defect bank alone changes.
    "dcam_config_anomalib_defects": (
        "Dcam",
        {"teacher_cache": "memory", "channels_last": True, "synthetic_anomaly_generator": "anomalib"},
        "32-true",
        0,
    ),
    "dcam_bf16": ("Dcam", {"teacher_cache": "off"}, "bf16-mixed", 2),
    "dcam_all": ("Dcam", {"teacher_cache": "memory", "channels_last": True}, "bf16-mixed", 0),
}

# Parts of a Dcam training step timed by the step profile (the rest of a step is backward and the optimiser).
STEP_PARTS = ("teacher_or_cache", "synthetic_defects", "student_forward", "loss")


class StepProfile:
    """Wall time of the parts of Dcam's training step, summed between calls of :meth:`take`.

    The callables that do each part are wrapped in place; a part that calls itself (the cache lookup computing the
    teacher's features on a miss) is counted once.
    """

    def __init__(self, model: object) -> None:
        self.seconds = dict.fromkeys(STEP_PARTS, 0.0)
        self._depth = dict.fromkeys(STEP_PARTS, 0)
        self._wrap(model, "_cached_teacher_features", "teacher_or_cache")
        self._wrap(model.model.teacher_model, "forward", "teacher_or_cache")
        self._wrap(model.model.student_model, "forward", "student_forward")
        self._wrap(model.loss, "forward", "loss")
        if getattr(model, "synthetic_anomalies", None) is not None:
            self._wrap(model, "synthetic_anomalies", "synthetic_defects")

    def _wrap(self, owner: object, attribute: str, part: str) -> None:
        function = getattr(owner, attribute)

        def timed(*args: object, **kwargs: object) -> object:
            self._depth[part] += 1
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self._depth[part] -= 1
                if self._depth[part] == 0:
                    self.seconds[part] += time.perf_counter() - start

        object.__setattr__(owner, attribute, timed)

    def take(self) -> dict[str, float]:
        """The seconds of each part since the last call."""
        taken = {part: round(self.seconds[part], 3) for part in STEP_PARTS}
        self.seconds.update(dict.fromkeys(STEP_PARTS, 0.0))
        return taken


def _step_split(parts: list[dict[str, float]], epochs: list[dict]) -> dict[str, float]:
    """Fraction of the training loop's time in each step part, data waiting and the rest, over ``epochs``."""
    total = sum(epoch["train_s"] for epoch in epochs)
    split = {part: sum(epoch[part] for epoch in parts) / total for part in STEP_PARTS}
    split["data_wait"] = sum(epoch["data_wait_s"] for epoch in epochs) / total
    split["other"] = 1.0 - sum(split.values())
    return {part: round(value, 3) for part, value in split.items()}


def _split_cell(split: dict[str, float] | None) -> str:
    return "-" if not split else " / ".join(f"{100 * value:.0f}" for value in split.values())


def worker(args: argparse.Namespace) -> None:
    """Train one setting and write its timings as JSON."""
    import torch
    from lightning.pytorch import Callback, seed_everything

    from anomalib_dcam import Dcam
    from anomalib_dcam.benchmark.callbacks import TrainingMonitor
    from anomalib_dcam.benchmark.records import load_matching, run_settings, write_record
    from anomalib_dcam.benchmark.timing import peak_rss_mb
    from anomalib_dcam.benchmark.training import timed_fit
    from anomalib_dcam.data import MultiClassMVTec

    model_name, options, precision, num_workers = SETTINGS[args.setting]
    pre_trained = args.backbone == "tf_efficientnet_lite0"

    class ProfiledMonitor(TrainingMonitor):
        """The package's training timing, with the step profile of each epoch's training loop."""

        def on_validation_epoch_start(self, trainer, pl_module) -> None:
            super().on_validation_epoch_start(trainer, pl_module)
            if self.epochs and not trainer.sanity_checking:
                self.epochs[-1]["step_parts_s"] = profile.take() if profile is not None else None

        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            super().on_validation_epoch_end(trainer, pl_module)
            if profile is not None:
                profile.take()  # validation's forward passes are not part of a training step

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
        from anomalib.models import Stfpm

        if pre_trained:
            model = Stfpm(backbone=args.backbone, layers=layers)
        else:  # speed only: no offline ImageNet weights for this backbone, so a random teacher like Dcam's
            from anomalib_dcam.benchmark.models import random_timm_weights

            with random_timm_weights():
                model = Stfpm(backbone=args.backbone, layers=layers)

    class FixedSubset(Callback):
        """Train on the same ``--images`` training images and validate on ``--val-images``, drawn from every category.

        The images are a seeded random choice: the samples are sorted by category, so the first ones would all be of
        one category, and a unified model needs training images of each.
        """

        def setup(self, trainer, pl_module, stage) -> None:
            for name, count in (("train_data", args.images), ("val_data", args.val_images)):
                data = getattr(datamodule, name)
                chosen = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:count].sort().values
                # anomalib's subsample keeps the samples table, so every image keeps its category.
                setattr(datamodule, name, data.subsample(chosen.tolist()))

    profile = StepProfile(model) if model_name == "Dcam" else None
    timer = ProfiledMonitor()
    trainer = {"max_epochs": args.epochs, "accelerator": "cpu", "devices": 1, "precision": precision}
    settings = run_settings(
        model,
        datamodule,
        trainer,
        0,
        setting=args.setting,
        images=args.images,
        val_images=args.val_images,
        image_choice="seeded random choice over all categories (torch.randperm, seed 0)",
        torch_threads=torch.get_num_threads(),
    )
    if load_matching(args.result, settings) is not None:
        print(f"[skip] {args.backbone} {args.setting}: recorded with the same settings in {args.result}", flush=True)
        return
    quiet = {"enable_progress_bar": False, "enable_model_summary": False}
    timed_fit(model, datamodule, args.run_dir, [FixedSubset(), timer], **trainer, **quiet)
    epochs = timer.epochs
    steady = epochs[1:] or epochs
    parts = [epoch["step_parts_s"] for epoch in steady if epoch["step_parts_s"] is not None]
    result = {
        "backbone": args.backbone,
        "setting": args.setting,
        "model": model_name,
        "options": options,
        "precision": precision,
        "num_workers": num_workers,
        "startup_s": round(timer.first_batch_at - PROCESS_START, 2),
        # Share of the steady-state training loop per part; "other" is backward, optimiser and Lightning.
        "step_split": _step_split(parts, steady) if parts else None,
        "first_epoch_img_s": epochs[0]["images"] / epochs[0]["train_s"],
        "train_img_s": sum(e["images"] for e in steady) / sum(e["train_s"] for e in steady),
        "data_wait_s": [round(e["data_wait_s"], 2) for e in epochs],
        "val_img_s": sum(e["val_images"] for e in epochs) / sum(e["val_s"] for e in epochs),
        "peak_rss_gb": peak_rss_mb() / 1024,
        "epochs": epochs,
        "torch_threads": torch.get_num_threads(),
    }
    cache = getattr(model, "teacher_cache", None)
    if cache is not None:
        result["teacher_cache"] = {**dataclasses.asdict(cache.stats), "disabled_reason": cache.disabled_reason}
    write_record(args.result, settings, result)


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

    # Before the worker's imports, which import huggingface_hub; the parent installs the weights, workers read them.
    offline_hf_cache(args.output, install=not args.worker)
    if args.worker:
        args.backbone, args.setting, result = args.worker
        args.result = Path(result)
        args.run_dir = args.result.with_suffix("")
        worker(args)
        return

    results = []
    # Alternate the settings backbone by backbone, so that a drift of the machine spreads over all of them. Each
    # worker builds its model, and trains only when no record holds exactly its settings.
    for backbone in args.backbones:
        for setting in args.settings:
            path = args.output / backbone / f"{setting}.json"
            print(f"[setting] {backbone} {setting}", flush=True)
            command = [sys.executable, __file__, "--worker", backbone, setting, str(path)]
            command += ["--root", str(args.root), "--categories", *args.categories]
            command += ["--images", str(args.images), "--val-images", str(args.val_images)]
            command += ["--epochs", str(args.epochs), "--output", str(args.output)]
            subprocess.run(command, check=True)
            results.append(json.loads(path.read_text())["results"])

    # Imported only now: the report module imports anomalib, which this process does not need while workers train.
    from anomalib_dcam.benchmark.report import markdown_table

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    print(f"\n{platform.node()}, {os.cpu_count()} CPUs, {stamp}, {args.images} images x {args.epochs} epochs, 256 px\n")
    header = ["backbone", "setting", "precision", "workers", "train img/s", "x Stfpm", "1st epoch img/s", "val img/s"]
    header += ["start-up s", "peak RSS GB", f"step split ({', '.join([*STEP_PARTS, 'data_wait', 'other'])})"]
    body = []
    for backbone in args.backbones:
        rows = [row for row in results if row["backbone"] == backbone]
        reference = next((row["train_img_s"] for row in rows if row["setting"] == "stfpm"), None)
        for row in rows:
            ratio = f"{row['train_img_s'] / reference:.2f}" if reference else "-"
            body.append(
                [
                    backbone,
                    row["setting"],
                    row["precision"],
                    row["num_workers"],
                    f"{row['train_img_s']:.2f}",
                    ratio,
                    f"{row['first_epoch_img_s']:.2f}",
                    f"{row['val_img_s']:.1f}",
                    f"{row['startup_s']:.1f}",
                    f"{row['peak_rss_gb']:.2f}",
                    _split_cell(row.get("step_split")),
                ]
            )
    print(markdown_table(header, body))


if __name__ == "__main__":
    main()
