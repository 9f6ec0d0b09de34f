# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""How the image score is read from the anomaly map: re-score trained unified models without training again.

Every model trained by ``benchmarks/unified.py`` keeps its selected checkpoint under
``<output>/<data>_e<epochs>_s<seed>/<run>_unified/``. This script loads the teacher and student of each requested run
and seed, runs them once over the test set and derives the image score of every image in several ways:

- ``max``: the maximum of the product map (what Dcam and Stfpm ship; reproduces the recorded image AUROC);
- ``top1%`` and ``top0.1%``: the mean of the highest 1 % / 0.1 % of the map's pixels (Dcam's
  ``image_score_top_fraction=0.01`` / ``0.001``);
- ``blur4_max``: the maximum after a Gaussian blur with sigma 4 px (``anomaly_map_sigma=4``);
- ``sum_max``: the maximum of the sum of the per-level maps (``anomaly_map_combine="sum"``);
- ``level<i>_max`` and ``level<i>_mean``: the maximum and the mean of pyramid level ``i``'s own distance map (levels
  1-3, finest first). They are diagnostics, not readouts to ship: they show which level tells a category's defects
  from its normals (``_max``) and whether a defect shifts the whole image's discrepancy rather than a spot (``_mean``);
- ``spot_or_shift``: the larger of two robust z-scores, the spot (``top0.1%``) and the shift (the mean of the three
  ``level<i>_mean``), each standardised by the median and MAD of the category's normal *test* images. Derived from
  the saved scores; standardising on the images it is scored on makes it an optimistic bound on what such a readout
  could give (a shipped one would standardise on held-out normals).

All of them are inference-only: they change no weight and need no retraining. Image AUROC and F1Max are reported per
category, on each category's small defects (its normal images against its defects that cover less than 1 % of the
image, where a top-k mean could dilute the defect) and as the mean over categories, for each readout, as mean ± std
over seeds with the per-seed paired difference to ``max``. Each model's per-image scores are saved first
(``image_scores_<checkpoint SHA-256, 16 digits>.json`` next to its checkpoint); each (run, seed) then writes a
record into ``<records>/<folder>/<run>.json`` (:mod:`anomalib_dcam.benchmark.records`) whose settings include the
trained model's record, and is skipped only when that record matches, so the study can grow as more models are
trained.

Example:
    python benchmarks/image_score.py --seeds 0 1 2 --runs dcam dcam_denoise_p0.5 stfpm_lr0.1
"""

import argparse
import json
import statistics
from pathlib import Path

from runs import add_run_arguments, build_model, checkpoint_state_dict, offline_hf_cache
from unified import run_folder

LEVELS = 3
READOUTS = (
    "max",
    "top1%",
    "top0.1%",
    "blur4_max",
    "sum_max",
    *(f"level{level}_{reduction}" for level in range(1, LEVELS + 1) for reduction in ("max", "mean")),
)
METRICS = ("image_AUROC", "image_F1Max")


SMALL_DEFECT = 0.01
"""Defects covering less than this fraction of the image are "small": the ones a top-k mean could dilute."""


def score_images(model, dataloader) -> dict:
    """Run teacher and student over ``dataloader``; return paths, labels, defect areas and every readout's scores."""
    import torch

    from anomalib_dcam.models.dcam import AnomalyMapGenerator, ImageScore

    top1, top01 = ImageScore(top_fraction=0.01), ImageScore(top_fraction=0.001)
    blur = AnomalyMapGenerator(sigma=4.0).blur  # the blur of anomaly_map_sigma=4
    torch_model = model.model.eval()
    out = {"image_path": [], "gt_label": [], "defect_fraction": [], **{readout: [] for readout in READOUTS}}
    with torch.inference_mode():
        for batch in dataloader:
            images = model.pre_processor.transform(batch.image) if model.pre_processor.transform else batch.image
            teacher = torch_model.teacher_model(images)
            student = torch_model.student_model(images)
            layer_maps = torch.stack(
                [
                    AnomalyMapGenerator.compute_layer_map(teacher[level], student[level], images.shape[-2:])
                    for level in teacher
                ]
            )
            product, total = layer_maps.prod(dim=0), layer_maps.sum(dim=0)
            out["max"] += product.amax(dim=(-2, -1)).flatten().tolist()
            out["top1%"] += top1(product).flatten().tolist()
            out["top0.1%"] += top01(product).flatten().tolist()
            out["blur4_max"] += blur(product).amax(dim=(-2, -1)).flatten().tolist()
            out["sum_max"] += total.amax(dim=(-2, -1)).flatten().tolist()
            for level, layer_map in enumerate(layer_maps, start=1):
                out[f"level{level}_max"] += layer_map.amax(dim=(-2, -1)).flatten().tolist()
                out[f"level{level}_mean"] += layer_map.mean(dim=(-2, -1)).flatten().tolist()
            out["image_path"] += [str(path) for path in batch.image_path]
            out["gt_label"] += batch.gt_label.int().flatten().tolist()
            out["defect_fraction"] += (batch.gt_mask > 0).flatten(1).float().mean(dim=1).tolist()
    return out


def predict_scores(run: str, checkpoint: Path, root: Path, categories: list[str]) -> dict:
    """Every readout's score of every test image for one trained model, with each image's category."""
    from torchvision.transforms.v2 import Resize

    from anomalib_dcam.data import MultiClassMVTec
    from anomalib_dcam.data.multiclass import categories_by_image_path

    model = build_model(run)
    state = checkpoint_state_dict(model, checkpoint)
    weights = {key.removeprefix("model."): value for key, value in state.items() if key.startswith("model.")}
    model.model.load_state_dict(weights)
    # Without a trainer the datamodule does not copy the model's resize; images of different sizes must not be
    # collated, so resize as training did (the pre-processor's resize is then a no-op before it normalises).
    image_size = next(t.size for t in model.pre_processor.transform.transforms if isinstance(t, Resize))
    datamodule = MultiClassMVTec(
        root=root, categories=categories, eval_batch_size=32, num_workers=0, test_augmentations=Resize(image_size)
    )
    datamodule.setup("test")
    scores = score_images(model, datamodule.test_dataloader())
    category_of = categories_by_image_path(datamodule.test_data)
    scores["category"] = [category_of[path] for path in scores["image_path"]]
    return scores


def spot_or_shift(scores: dict) -> list[float]:
    """The ``spot_or_shift`` score of every image (see the module docstring), from the saved readouts."""
    import torch

    categories = scores["category"]
    normal = torch.tensor(scores["gt_label"]) == 0
    spot = torch.tensor(scores["top0.1%"])
    shift = torch.stack([torch.tensor(scores[f"level{level}_mean"]) for level in range(1, LEVELS + 1)]).mean(dim=0)
    combined = torch.empty_like(spot)
    for category in set(categories):
        index = torch.tensor([name == category for name in categories])
        robust_z = []
        for values in (spot[index], shift[index]):
            reference = values[normal[index]]
            median = reference.median()
            robust_z.append((values - median) / ((reference - median).abs().median() + 1e-12))
        combined[index] = torch.maximum(*robust_z)
    return combined.tolist()


DERIVED_READOUTS = {"spot_or_shift": spot_or_shift}
"""Readouts computed from the saved scores of the others: name -> function of the saved scores."""


def image_metrics(scores: dict, categories: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Image metrics of every readout by category, by ``<category> small`` and as the ``mean`` over categories.

    ``<category> small`` compares the category's normal images with its defects smaller than :data:`SMALL_DEFECT`.
    """
    import torch

    from anomalib_dcam.callbacks.per_category import compute_anomaly_metrics

    labels = torch.tensor(scores["gt_label"])
    small = torch.tensor([0 < area < SMALL_DEFECT for area in scores["defect_fraction"]])
    # A category with image labels only has empty masks: it has no "small" group.
    with_masks = {c for c, a in zip(scores["category"], scores["defect_fraction"], strict=True) if a > 0}
    derived = {name: compute(scores) for name, compute in DERIVED_READOUTS.items()}
    by_readout: dict[str, dict[str, dict[str, float]]] = {}
    for readout in (*READOUTS, *DERIVED_READOUTS):
        values = torch.tensor(derived[readout] if readout in derived else scores[readout])
        rows = {}
        for category in categories:
            in_category = torch.tensor([name == category for name in scores["category"]])
            groups = [(category, in_category)]
            if category in with_masks:
                groups.append((f"{category} small", in_category & ((labels == 0) | small)))
            for group, index in groups:
                metrics = compute_anomaly_metrics(values[index], labels[index])
                rows[group] = {metric: metrics[metric] for metric in METRICS}
        rows["mean"] = {metric: statistics.fmean(rows[c][metric] for c in categories) for metric in METRICS}
        by_readout[readout] = rows
    return by_readout


def main() -> None:
    """Re-score the requested runs and seeds and print a Markdown table per run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, several_seeds=True)
    parser.add_argument("--runs", nargs="+", default=["dcam", "dcam_denoise_p0.5", "stfpm_lr0.1"])
    parser.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS)
    parser.add_argument("--output", type=Path, default=Path("results/unified"))
    parser.add_argument("--records", type=Path, default=Path(__file__).parent / "records" / "image_score")
    parser.add_argument(
        "--unified-records",
        type=Path,
        default=Path(__file__).parent / "records" / "unified",
        help="records of the trained models (benchmarks/unified.py): their settings are part of this record's",
    )
    args = parser.parse_args()
    offline_hf_cache(args.output)  # before the imports below, which import huggingface_hub
    from anomalib_dcam.benchmark.records import file_digest, load_matching, write_record
    from anomalib_dcam.benchmark.report import format_per_seed, markdown_table, mean_std, paired_differences

    results: dict[str, dict[int, dict]] = {}
    for run in args.runs:
        for seed in args.seeds:
            folder = run_folder(args.categories, args.epochs, seed, speed="fast")
            model_record = args.unified_records / folder / f"{run}_unified.json"
            trained = json.loads(model_record.read_text()) if model_record.is_file() else None
            settings = {
                "model_record": str(model_record),
                "model_settings": trained.get("settings") if isinstance(trained, dict) else None,
                "readouts": [*READOUTS, *DERIVED_READOUTS],
                "small_defect": SMALL_DEFECT,
            }
            record_path = args.records / folder / f"{run}.json"
            record = load_matching(record_path, settings)
            if record is not None:
                results.setdefault(run, {})[seed] = record["results"]
                continue
            checkpoints = sorted((args.output / folder / f"{run}_unified").rglob("model.ckpt"))
            if len(checkpoints) != 1:
                print(
                    f"[skip] {run} seed {seed}: expected one model.ckpt under {args.output / folder}, "
                    f"found {len(checkpoints)}",
                    flush=True,
                )
                continue
            # Predictions first, metrics from them; named after the weights, so a retrained model is scored anew.
            saved = checkpoints[0].parent / f"image_scores_{file_digest(checkpoints[0])[:16]}.json"
            scores = json.loads(saved.read_text()) if saved.is_file() else {}
            if not set(READOUTS) <= set(scores):  # not saved yet, or saved before a readout was added
                print(f"[score] {run} seed {seed}: {checkpoints[0]}", flush=True)
                scores = predict_scores(run, checkpoints[0], args.root, args.categories)
                saved.write_text(json.dumps(scores))
            by_readout = image_metrics(scores, args.categories)
            write_record(record_path, settings, by_readout)
            results.setdefault(run, {})[seed] = by_readout

    for run, seeds in results.items():
        for metric in args.metrics:
            print(f"\n{run}, {metric}, seeds {sorted(seeds)}\n")
            groups = [group for group in next(iter(seeds.values()))["max"] if group != "mean"] + ["mean"]
            body = []
            for readout in (*READOUTS, *DERIVED_READOUTS):
                cells = [mean_std([seeds[s][readout][group][metric] for s in sorted(seeds)]) for group in groups]
                differences = paired_differences(
                    {s: seeds[s][readout]["mean"][metric] for s in sorted(seeds)},
                    {s: seeds[s]["max"]["mean"][metric] for s in sorted(seeds)},
                )
                points = {seed: 100 * difference for seed, difference in differences.items()}  # percentage points
                paired = f"{statistics.fmean(points.values()):+.1f} ({format_per_seed(points, 1, seed_labels=False)})"
                body.append([readout, *cells, paired])
            print(markdown_table(["readout", *groups, "paired Δ mean vs max (per seed)"], body))


if __name__ == "__main__":
    main()
