# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Does a deployed model reject products it was not trained on? Leave one category out, and one-product models.

Product recognition (:class:`anomalib_dcam.post_processing.CategoryRecognizer`, inside Dcam's default post-processor)
describes an image by the frozen teacher's pooled pyramid, which training does not change. So the recognition a
trained model deploys can be measured without training: the teacher's features of every image are computed once
(``features.pt``, saved before any figure), then for each split the recogniser is fitted exactly as the post-processor
fits it at the start of training, on the training normals of the known categories (after the datamodule's seeded 20 %
validation hold-out), and applied to test images.

- ``leave-one-out``: known = every category but one; reported: the share of the left-out (unseen) category's test
  images flagged unknown (goal >= 95 %), and of the known categories' normal test images flagged (goal <= 1 %,
  the ``unknown_rejection_rate``).
- ``one product``: known = one category; the share of its own normal test images flagged, and of the other
  categories' test images flagged.

A record (:mod:`anomalib_dcam.benchmark.records`) stores the settings and the table.

Example:
    python benchmarks/unknown_products.py --root ../shared/data/industrial
"""

import argparse
from pathlib import Path

from runs import BACKBONE, PYRAMID, offline_hf_cache


def teacher_features(root: Path, categories: list[str], seed: int, output: Path) -> dict:
    """Pooled teacher features, category and label of every training and test image (cached in ``output``)."""
    import torch

    from anomalib_dcam import Dcam
    from anomalib_dcam.data import MultiClassMVTec
    from anomalib_dcam.data.multiclass import categories_by_image_path
    from anomalib_dcam.post_processing.category import pooled_features

    saved = output / "features.pt"
    if saved.is_file():
        return torch.load(saved)
    model = Dcam(backbone=BACKBONE, layers=PYRAMID)
    model.model.load_teacher_weights(None)
    module = model.post_processor.find_feature_module(model).eval()
    transform = model.pre_processor.transform
    datamodule = MultiClassMVTec(
        root=root, categories=categories, num_workers=0, val_split_mode="from_train", seed=seed, eval_batch_size=32
    )
    datamodule.setup()
    result = {}
    for split, dataset in (("train", datamodule.train_data), ("test", datamodule.test_data)):
        category_of = categories_by_image_path(dataset)
        loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=False, collate_fn=dataset.collate_fn)
        features, names, labels = [], [], []
        with torch.no_grad():
            for batch in loader:
                features.append(pooled_features(module(transform(batch.image))))
                names += [category_of[str(path)] for path in batch.image_path]
                labels += batch.gt_label.int().tolist()
            print(f"[features] {split}: {len(names)} images", flush=True)
        result[split] = {"features": torch.cat(features), "category": names, "label": labels}
    output.mkdir(parents=True, exist_ok=True)
    torch.save(result, saved)
    return result


def flagged_shares(data: dict, known: list[str], rejection_rate: float) -> dict[str, float]:
    """Fit the recogniser on the known categories' training normals; shares of test images flagged unknown."""
    import torch

    from anomalib_dcam.post_processing.category import UNKNOWN_CATEGORY, CategoryRecognizer

    train, test = data["train"], data["test"]
    rows = [index for index, name in enumerate(train["category"]) if name in known]
    recognizer = CategoryRecognizer(rejection_rate=rejection_rate)
    recognizer.fit(
        train["features"][rows], torch.tensor([known.index(train["category"][index]) for index in rows]), len(known)
    )
    category, _ = recognizer(test["features"])
    flagged = (category == UNKNOWN_CATEGORY).tolist()

    def share(keep: list[bool]) -> float:
        chosen = [flag for flag, selected in zip(flagged, keep, strict=True) if selected]
        return sum(chosen) / len(chosen) if chosen else float("nan")

    names, labels = test["category"], test["label"]
    return {
        "unseen_flagged": share([name not in known for name in names]),
        "known_normal_flagged": share(
            [name in known and label == 0 for name, label in zip(names, labels, strict=True)]
        ),
        "known_defective_flagged": share(
            [name in known and label == 1 for name, label in zip(names, labels, strict=True)]
        ),
    }


def main() -> None:
    """Measure both settings, write the record and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data/industrial"))
    parser.add_argument("--categories", nargs="+", default=None, help="default: every category under --root")
    parser.add_argument("--seed", type=int, default=0, help="seed of the 20 %% validation hold-out")
    parser.add_argument("--rejection-rate", type=float, default=0.01, help="unknown_rejection_rate")
    parser.add_argument("--output", type=Path, default=Path("results/unknown_products"))
    parser.add_argument(
        "--record", type=Path, default=Path(__file__).parent / "records" / "unknown_products" / "seven_categories.json"
    )
    args = parser.parse_args()
    # The teacher's weights come with the package: only point at the cache, before anything imports huggingface_hub.
    offline_hf_cache(args.output, install=False)
    from anomalib_dcam.benchmark.records import environment, write_record
    from anomalib_dcam.benchmark.report import markdown_table
    from anomalib_dcam.data.multiclass import resolve_categories

    categories = resolve_categories(args.root, args.categories)
    data = teacher_features(args.root, categories, args.seed, args.output)
    leave_one_out = {
        left_out: flagged_shares(data, [name for name in categories if name != left_out], args.rejection_rate)
        for left_out in categories
    }
    one_product = {name: flagged_shares(data, [name], args.rejection_rate) for name in categories}
    settings = {
        "backbone": BACKBONE,
        "layers": PYRAMID,
        "features": "CategoryPostProcessor.find_feature_module(Dcam) -> pooled_features (ImageNet teacher)",
        "image_size": 256,
        "root": str(args.root),
        "categories": categories,
        "split": {"val_split_mode": "from_train", "val_split_ratio": 0.2, "seed": args.seed},
        "unknown_rejection_rate": args.rejection_rate,
        "environment": environment(),
    }
    write_record(args.record, settings, {"leave_one_out": leave_one_out, "one_product": one_product})
    print(f"\nLeave one category out (unknown_rejection_rate {args.rejection_rate}), record {args.record}\n")
    header = ["left out", "unseen images flagged", "known normals flagged", "known defectives flagged"]
    body = [[name, *(f"{100 * value:.1f} %" for value in shares.values())] for name, shares in leave_one_out.items()]
    print(markdown_table(header, body))
    print("\nOne-product models\n")
    header = ["product", "its normals flagged", "other products' images flagged", "its defectives flagged"]
    order = ("known_normal_flagged", "unseen_flagged", "known_defective_flagged")  # the header's order
    body = [[name, *(f"{100 * shares[key]:.1f} %" for key in order)] for name, shares in one_product.items()]
    print(markdown_table(header, body))
    mean_unseen = sum(shares["unseen_flagged"] for shares in leave_one_out.values()) / len(leave_one_out)
    print(f"\nMean share of an unseen product's images flagged: {100 * mean_unseen:.1f} %")


if __name__ == "__main__":
    main()
