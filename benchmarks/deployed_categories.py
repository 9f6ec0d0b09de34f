# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""One deployed model for every product: recognition, per-category calibration and its cost, on the shared data.

Trains one unified Dcam (``tf_efficientnet_lite0`` offline weights, 256 px, the configs' training-speed settings,
the default validation split: 20 % of each category's training normals held out, half of them turned into synthetic
anomalies of that category; held-out-normal model selection), then measures on every test image:

- category recognition accuracy (``pred_category`` against the image's folder), and how many are flagged unknown;
- pooled ("global") image and pixel AUROC of the deployed, post-processed outputs, with per-category calibration and
  with anomalib's single calibration (the same checkpoint, ``category_calibration=False``), against the mean of the
  per-category image AUROCs of the raw scores (the oracle that knows each image's category);
- per category, at the deployed threshold (``pred_label``): F1, false-positive rate on normals, recall on defects;
- batch-1 latency of the OpenVINO IR with recognition against the same model's IR without it (``f32`` hint),
  alternating, in one run;
- the unknown-product flag: a model trained on one category (``recognize_single_category=True``) scores the other
  category's test images, both ways (1 epoch each: the flag depends only on the frozen teacher).

Predictions are saved to ``<output>/predictions_<mode>.pt`` before any metric is computed; a finished training is
reused. Writes ``<output>/deployed_categories.json`` and prints Markdown tables.

Example:
    python benchmarks/deployed_categories.py --epochs 5 --seed 0
"""

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from dcam_vs_stfpm import build_model
from torchmetrics.functional.classification import binary_auroc


def _datamodule(root: Path, categories: list[str], seed: int):
    from anomalib_dcam.data import MultiClassMVTec

    return MultiClassMVTec(
        root=root,
        categories=categories,
        train_batch_size=32,
        eval_batch_size=32,
        num_workers=0,
        seed=seed,
    )


def _engine(run_dir: Path, epochs: int, callbacks: list | None = None):
    from anomalib.engine import Engine

    return Engine(
        max_epochs=epochs,
        default_root_dir=run_dir,
        logger=False,
        accelerator="cpu",
        devices=1,
        precision="32-true",
        callbacks=callbacks or [],
    )


def train(root: Path, categories: list[str], epochs: int, seed: int, run_dir: Path, **post_processing) -> Path:
    """Train (or reuse) one Dcam; return its best checkpoint."""
    from lightning.pytorch import seed_everything

    from anomalib_dcam.callbacks import HeldOutNormalCheckpoint
    from anomalib_dcam.post_processing import CategoryPostProcessor

    done = run_dir / "best.ckpt"
    if done.is_file():
        return done
    seed_everything(seed, workers=True)
    checkpoint = HeldOutNormalCheckpoint()
    post_processor = CategoryPostProcessor(**post_processing)
    model = build_model("dcam", {"teacher_cache": "memory", "channels_last": True, "post_processor": post_processor})
    start = time.perf_counter()
    _engine(run_dir, epochs, [checkpoint]).fit(model=model, datamodule=_datamodule(root, categories, seed))
    print(f"fit {categories}: {time.perf_counter() - start:.0f} s", flush=True)
    Path(checkpoint.best_model_path).rename(done)
    return done


def load(checkpoint: Path):
    """Restore a trained Dcam for scoring."""
    from anomalib_dcam import Dcam

    model = Dcam.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    model.visualizer = None  # scores only; no heat-map images
    return model


def predict(model, datamodule, output: Path) -> dict[str, torch.Tensor | list]:
    """Deployed outputs of every test image (saved before any metric is computed)."""
    if output.is_file():
        return torch.load(output, weights_only=False)
    batches = _engine(output.parent / "predict", 1).predict(model=model, dataloaders=datamodule.test_dataloader())
    names = [name for batch in batches for name in getattr(batch, "pred_category_name", [""] * len(batch.image_path))]
    result = {
        "image_path": [str(path) for batch in batches for path in batch.image_path],
        "category_name": names,
        "pred_score": torch.cat([batch.pred_score.reshape(-1) for batch in batches]),
        "pred_label": torch.cat(
            [
                torch.zeros(len(batch.image_path), dtype=torch.bool)
                if batch.pred_label is None
                else batch.pred_label.reshape(-1)
                for batch in batches
            ],
        ),
        "gt_label": torch.cat([batch.gt_label.reshape(-1) for batch in batches]),
        "anomaly_map": torch.cat([batch.anomaly_map.reshape(len(batch.image_path), -1).half() for batch in batches]),
        "gt_mask": torch.cat([batch.gt_mask.reshape(len(batch.image_path), -1).bool() for batch in batches]),
    }
    torch.save(result, output)
    return result


def summarise(result: dict, root: Path, categories: list[str]) -> dict:
    """Recognition accuracy, pooled AUROCs and per-category rates at the deployed threshold."""
    truth = [Path(path).resolve().relative_to(root.resolve()).parts[0] for path in result["image_path"]]
    labels, scores, predicted = result["gt_label"].int(), result["pred_score"].float(), result["pred_label"].bool()
    summary = {
        "images": len(truth),
        "recognition_accuracy": sum(a == b for a, b in zip(result["category_name"], truth, strict=True)) / len(truth),
        "flagged_unknown": sum(name == "unknown" for name in result["category_name"]),
        "pooled_image_AUROC": float(binary_auroc(scores, labels)),
        "pooled_pixel_AUROC": float(
            binary_auroc(result["anomaly_map"].float().flatten(), result["gt_mask"].flatten().int())
        ),
        "per_category": {},
    }
    for category in categories:
        rows = torch.tensor([name == category for name in truth])
        tp = int((predicted & (labels == 1) & rows).sum())
        fp = int((predicted & (labels == 0) & rows).sum())
        fn = int((~predicted & (labels == 1) & rows).sum())
        normals, defects = int(((labels == 0) & rows).sum()), int(((labels == 1) & rows).sum())
        summary["per_category"][category] = {
            "image_AUROC": float(binary_auroc(scores[rows], labels[rows])),
            "F1": 2 * tp / max(2 * tp + fp + fn, 1),
            "FPR_normals": fp / max(normals, 1),
            "recall_defects": tp / max(defects, 1),
        }
    summary["mean_category_image_AUROC"] = sum(row["image_AUROC"] for row in summary["per_category"].values()) / len(
        categories
    )
    return summary


def latency(model, output: Path, rounds: int = 5, iterations: int = 50) -> dict[str, float]:
    """Batch-1 latency (ms, median of rounds) of the IR with recognition and without it, alternating."""
    import copy

    import numpy as np

    from anomalib_dcam.deploy import compile_openvino

    plain = copy.deepcopy(model)
    plain.post_processor.recognizer.prototypes = torch.empty(0, 0)  # a one-category post-processor
    paths = {
        "with_recognition": model.to_openvino(output / "ir_with", input_size=(256, 256)),
        "without_recognition": plain.to_openvino(output / "ir_without", input_size=(256, 256)),
    }
    compiled = {name: compile_openvino(path, precision_hint="f32", num_threads=2) for name, path in paths.items()}
    image = np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32)
    timings: dict[str, list[float]] = {name: [] for name in compiled}
    for name in compiled:
        for _ in range(5):
            compiled[name](image)  # warm-up
    for _ in range(rounds):
        for name, model_ir in compiled.items():
            start = time.perf_counter()
            for _ in range(iterations):
                model_ir(image)
            timings[name].append((time.perf_counter() - start) / iterations * 1000)
    medians = {name: float(np.median(values)) for name, values in timings.items()}
    medians["ratio"] = medians["with_recognition"] / medians["without_recognition"]
    return medians


def unknown_flag(root: Path, categories: list[str], seed: int, output: Path) -> dict[str, dict[str, float]]:
    """Train on one category, score every category's test images: the fraction flagged unknown."""
    results = {}
    for known in categories:
        checkpoint = train(root, [known], 1, seed, output / f"only_{known}", recognize_single_category=True)
        model = load(checkpoint)
        rows = {}
        for category in categories:
            datamodule = _datamodule(root, [category], seed)
            datamodule.setup()
            predicted = predict(model, datamodule, output / f"only_{known}" / f"predictions_{category}.pt")
            rows[category] = sum(name == "unknown" for name in predicted["category_name"]) / len(
                predicted["category_name"]
            )
        results[f"trained_on_{known}"] = rows
    return results


def main() -> None:
    """Train, score and report (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("../shared/data/industrial"))
    parser.add_argument("--categories", nargs="+", default=["bottle", "magnetic_tile"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--normal-quantiles", type=float, nargs="*", default=[0.99])
    parser.add_argument("--skip-latency", action="store_true", help="skip the IR latency and unknown-flag parts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("results/deployed_categories"))
    args = parser.parse_args()
    output = args.output / f"e{args.epochs}_s{args.seed}"
    output.mkdir(parents=True, exist_ok=True)
    from lightning.pytorch import seed_everything

    model = load(train(args.root, args.categories, args.epochs, args.seed, output / "unified"))
    datamodule = _datamodule(args.root, args.categories, args.seed)
    datamodule.setup()
    report = {"categories": args.categories, "epochs": args.epochs, "seed": args.seed}
    post_processor = model.post_processor
    # raw: the model's scores before any post-processing; their per-category AUROCs are the "oracle" that knows the
    # category, the reference of the multi-class benchmarks.
    modes = (("per_category", True, True), ("single", False, True), ("raw", True, False))
    for mode, calibrated, post_processing in modes:
        post_processor.category_calibration = calibrated
        post_processor.enable_normalization = post_processor.enable_thresholding = post_processing
        predictions = predict(model, datamodule, output / f"predictions_{mode}.pt")
        report[mode] = summarise(predictions, args.root, args.categories)
    post_processor.category_calibration = True
    post_processor.enable_normalization = post_processor.enable_thresholding = True
    for quantile in args.normal_quantiles:
        # Thresholds at a false-alarm budget on each category's held-out normals, from a validation pass.
        post_processor.normal_quantile = quantile
        seed_everything(args.seed, workers=True)
        _engine(output / "validate", 1).validate(
            model=model, datamodule=_datamodule(args.root, args.categories, args.seed)
        )
        mode = f"per_category_q{quantile}"
        predictions = predict(model, datamodule, output / f"predictions_{mode}.pt")
        report[mode] = summarise(predictions, args.root, args.categories)
    post_processor.normal_quantile = None
    if not args.skip_latency:
        report["latency_ms_batch1_f32"] = latency(model, output)
        report["unknown_flag_fraction"] = unknown_flag(args.root, args.categories, args.seed, output)
    report["machine"] = f"{platform.node()}, {platform.processor() or platform.machine()}"
    report["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    name = f"deployed_categories_e{args.epochs}_s{args.seed}{'_calibration' if args.skip_latency else ''}.json"
    (args.output / name).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
