# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""What one unified model decides when it is deployed with the default post-processing, product by product.

Takes a model trained by ``benchmarks/unified.py`` (its selected checkpoint under ``--results``, its record under
``benchmarks/records/unified``) and scores every test image of its categories three ways: the PyTorch model with
its default post-processor, its OpenVINO FP32 IR and its OpenVINO INT8 IR (post-training quantization on up to 300
training normals, :class:`~anomalib_dcam.deploy.NormalsCalibration`, anomaly-map head in floating point). The IRs
run through :func:`~anomalib_dcam.deploy.openvino_inferencer` (``f32`` precision hint, synchronous, one image at a
time). Per product (the folder an image comes from), for each way:

- ``false_alarm_rate``: the share of normal test images at or above the deployed threshold (``pred_label``), against
  the post-processor's ``false_alarm_rate`` budget, which is met on held-out training normals;
- ``recall``: the share of defective test images flagged, against ``best_recall_same_far``, the best recall that any
  threshold on the raw PyTorch scores reaches while flagging no more normal test images (an oracle that sees the
  test labels), and ``best_recall_budget``, the same at the budget itself;
- ``auroc_raw`` (PyTorch, before post-processing) and ``auroc``: image AUROC of the deployed scores;
- ``normals_unknown`` / ``defects_unknown``: the share flagged as an unknown product (against the
  ``unknown_rejection_rate`` budget) and ``recognised``: the share given its own product.

Predictions are saved to ``<output>/<run folder>/<run>/<checkpoint SHA-256, 16 digits>/predictions_<way>.pt`` before
any figure; a record (:mod:`anomalib_dcam.benchmark.records`) stores the unified run's settings, the export settings
and the table.

Example:
    python benchmarks/unified.py --categories bottle magnetic_tile --epochs 5 --seed 0 --runs dcam_default:unified
    python benchmarks/deployed_categories.py --categories bottle magnetic_tile --epochs 5 --seed 0 --run dcam_default
"""

import argparse
import json
import os
from pathlib import Path

import torch
from runs import add_run_arguments
from unified import build_run, run_folder

EXPORT = {"input_size": [256, 256], "int8": "INT8_PTQ", "calibration": "NormalsCalibration(num_images=300)"}
INFERENCE = {"precision_hint": "f32", "mode": "synchronous, batch 1", "num_threads": "OpenVINO default"}


def torch_predictions(model: object, datamodule: object, post_processing: bool, run_dir: Path) -> dict:
    """Scores, decisions and products of every test image from the PyTorch model, with or without post-processing."""
    from anomalib.engine import Engine

    post_processor = model.post_processor
    post_processor.enable_normalization = post_processor.enable_thresholding = post_processing
    engine = Engine(accelerator="cpu", devices=1, logger=False, default_root_dir=run_dir, enable_progress_bar=False)
    try:
        batches = engine.predict(model=model, dataloaders=datamodule.test_dataloader())
    finally:  # the later ways (the exports) must see the deployed post-processing
        post_processor.enable_normalization = post_processor.enable_thresholding = True
    return {
        "image_path": [str(path) for batch in batches for path in batch.image_path],
        "pred_score": torch.cat([batch.pred_score.reshape(-1).float() for batch in batches]).tolist(),
        "pred_label": [bool(v) for b in batches for v in (b.pred_label if post_processing else b.gt_label).reshape(-1)],
        "pred_category_name": [name for batch in batches for name in getattr(batch, "pred_category_name", [])],
    }


def openvino_predictions(xml: Path, image_paths: list[str]) -> dict:
    """The same from an exported IR, through the plugin's inferencer."""
    from anomalib_dcam.deploy import openvino_inferencer

    inferencer = openvino_inferencer(xml, precision_hint=INFERENCE["precision_hint"])
    result: dict[str, list] = {"image_path": image_paths, "pred_score": [], "pred_label": [], "pred_category_name": []}
    for path in image_paths:
        prediction = inferencer.predict(path)
        result["pred_score"].append(float(prediction.pred_score.reshape(-1)[0]))
        result["pred_label"].append(bool(prediction.pred_label.reshape(-1)[0]))
        result["pred_category_name"].append(str(prediction.pred_category_name[0]))
    return result


def saved(path: Path, compute: object) -> dict:
    """``compute()`` once: its result is saved to ``path`` and read back on later runs."""
    if not path.is_file():
        torch.save(compute(), path)
    return torch.load(path, weights_only=True)


def best_recall(normals: torch.Tensor, defects: torch.Tensor, false_alarms: int) -> float:
    """The best share of ``defects`` above a threshold that leaves at most ``false_alarms`` normals above it."""
    if false_alarms >= len(normals):
        return 1.0
    limit = normals.sort(descending=True).values[false_alarms]
    return float((defects > limit).float().mean())


def product_table(way: dict, raw: dict, products: list[str], categories: list[str], budget: float) -> dict:
    """Per product: false alarms, recall against the oracle, AUROC before and after, unknown-product shares."""
    from anomalib_dcam.callbacks import compute_anomaly_metrics

    table = {}
    for category in categories:
        rows = [index for index, product in enumerate(products) if product == category]
        labels = torch.tensor([raw["gt_label"][index] for index in rows])
        scores = torch.tensor([way["pred_score"][index] for index in rows])
        raw_scores = torch.tensor([raw["pred_score"][index] for index in rows])
        flagged = torch.tensor([way["pred_label"][index] for index in rows])
        names = [way["pred_category_name"][index] for index in rows]
        normal, defective = labels == 0, labels == 1
        false_alarms = int((flagged & normal).sum())
        unknown = torch.tensor([name == "unknown" for name in names])
        table[category] = {
            "normals": int(normal.sum()),
            "defects": int(defective.sum()),
            "false_alarm_rate": false_alarms / int(normal.sum()),
            "recall": float(flagged[defective].float().mean()),
            "best_recall_same_far": best_recall(raw_scores[normal], raw_scores[defective], false_alarms),
            "best_recall_budget": best_recall(
                raw_scores[normal], raw_scores[defective], int(budget * int(normal.sum()))
            ),
            "auroc_raw": compute_anomaly_metrics(raw_scores, labels)["image_AUROC"],
            "auroc": compute_anomaly_metrics(scores, labels)["image_AUROC"],
            "normals_unknown": float(unknown[normal].float().mean()),
            "defects_unknown": float(unknown[defective].float().mean()),
            "recognised": sum(name == category for name in names) / len(names),
        }
    return table


def main() -> None:
    """Score the test images the three ways, write the record and print one Markdown table per way."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--run", default="dcam_default", help="a unified run of benchmarks/unified.py")
    parser.add_argument("--results", type=Path, default=Path("results/unified"), help="unified.py's --output")
    parser.add_argument("--output", type=Path, default=Path("results/deployed_categories"))
    parser.add_argument("--records", type=Path, default=Path(__file__).parent / "records" / "deployed_categories")
    args = parser.parse_args()

    folder = run_folder(args.categories, args.epochs, args.seed, "fast")
    unified_record = Path(__file__).parent / "records" / "unified" / folder / f"{args.run}_unified.json"
    checkpoints = sorted((args.results / folder / f"{args.run}_unified").glob("**/weights/lightning/model.ckpt"))
    if not unified_record.is_file() or not checkpoints:
        parser.error(
            f"no trained model for --run {args.run} in {args.results / folder} (record {unified_record}); train it "
            f"first: python benchmarks/unified.py --categories {' '.join(args.categories)} --epochs {args.epochs} "
            f"--seed {args.seed} --runs {args.run}:unified --output {args.results}",
        )
    os.environ["HF_HUB_OFFLINE"] = "1"
    from anomalib_dcam import Dcam
    from anomalib_dcam.benchmark.records import file_digest, load_matching, write_record
    from anomalib_dcam.benchmark.report import markdown_table
    from anomalib_dcam.data.multiclass import categories_by_image_path
    from anomalib_dcam.deploy import NormalsCalibration, export_openvino

    trained = json.loads(unified_record.read_text())
    settings = {"unified_record": f"unified/{folder}/{args.run}_unified.json", "unified": trained["settings"]}
    settings.update(export=EXPORT, inference=INFERENCE)
    record_path = args.records / folder / f"{args.run}_unified.json"
    if load_matching(record_path, settings) is not None:
        print(f"[skip] recorded with the same settings in {record_path}")
        return

    _, datamodule, _, built = build_run(args.run, args.categories, args.root, args.epochs, args.seed, "fast", False)
    if built != trained["settings"]["runs"][0]:
        parser.error(f"{unified_record} was trained with other settings than --run {args.run} builds today; rerun it")
    datamodule.setup()
    checkpoint = max(checkpoints, key=lambda path: path.stat().st_mtime)  # a rerun of unified.py adds a version
    model = Dcam.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    model.visualizer = None  # scores only
    # The saved predictions and IRs belong to these weights: a retrained model gets a folder of its own.
    output = args.output / folder / args.run / file_digest(checkpoint)[:16]
    output.mkdir(parents=True, exist_ok=True)
    raw = saved(output / "predictions_raw.pt", lambda: torch_predictions(model, datamodule, False, output))
    raw["gt_label"] = [int(label) for label in raw.pop("pred_label")]
    paths = raw["image_path"]
    by_path = categories_by_image_path(datamodule.test_data)
    products = [by_path[path] for path in paths]
    ways = {
        "pytorch_fp32": saved(
            output / "predictions_pytorch_fp32.pt", lambda: torch_predictions(model, datamodule, True, output)
        )
    }
    exports = {"openvino_fp32": None, "openvino_int8": EXPORT["int8"]}
    for way, compression in exports.items():
        xml = output / way / "weights" / "openvino" / "model.xml"
        if not xml.is_file():
            calibration = NormalsCalibration(datamodule, image_size=EXPORT["input_size"]) if compression else None
            export_openvino(model, output / way, tuple(EXPORT["input_size"]), compression, datamodule=calibration)
        ways[way] = saved(output / f"predictions_{way}.pt", lambda xml=xml: openvino_predictions(xml, paths))
        if ways[way]["image_path"] != paths:
            raise RuntimeError(f"{way}: scored other images than the PyTorch model")

    budget = model.post_processor.false_alarm_rate
    tables = {way: product_table(result, raw, products, args.categories, budget) for way, result in ways.items()}
    results = {"false_alarm_rate_budget": budget, "unknown_rejection_rate": model.post_processor.unknown_rejection_rate}
    write_record(record_path, settings, {**results, "tables": tables})
    columns = list(next(iter(tables["pytorch_fp32"].values())))
    for way, table in tables.items():
        body = [
            [category, *(f"{value:.3f}" if isinstance(value, float) else str(value) for value in row.values())]
            for category, row in table.items()
        ]
        print(f"\n{way} (budget: false-alarm rate {budget:.1%})\n")
        print(markdown_table(["product", *columns], body))


if __name__ == "__main__":
    main()
