# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Data pre-flight: find every bad file of a dataset before training starts, and name each one.

One truncated PNG among thousands stops a training run with ``OSError: image file is truncated`` and no file name.
:func:`check_samples` decodes every image and mask of an anomalib sample table (in threads: decoding releases the
GIL) and reports all problems at once:

- an image or mask that does not decode (truncated, empty, not an image);
- a defective test image without a mask (in a category that has masks; a category without a ``ground_truth/``
  folder has image labels only);
- a mask whose size differs from its image's;
- a category without training or without test images.

:class:`~anomalib_dcam.data.MultiClassMVTec` runs it when it sets up (``bad_files="error"`` stops with
:class:`BadDataError`; ``"skip"`` leaves the bad samples out and writes ``skipped_files.csv`` into the run's
folder). ``anomalib-dcam check-data <root>`` runs it on any MVTec-layout root (anomalib's ``MVTecAD`` too) or, for
anomalib's ``Folder`` layout, on every image under a folder.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from anomalib.data.utils.image import is_image_file
from PIL import Image, UnidentifiedImageError


@dataclass(frozen=True)
class BadFile:
    """One problem found by the pre-flight check."""

    path: str
    reason: str


class BadDataError(ValueError):
    """The dataset has bad files; ``bad_files`` lists every one of them."""

    def __init__(self, bad_files: Sequence[BadFile], what: str = "the dataset") -> None:
        self.bad_files = list(bad_files)
        listed = "\n".join(f"  {bad.path}: {bad.reason}" for bad in self.bad_files[:50])
        more = f"\n  ... and {len(self.bad_files) - 50} more" if len(self.bad_files) > 50 else ""
        super().__init__(
            f"{what} has {len(self.bad_files)} bad file(s):\n{listed}{more}\n"
            "Fix or remove them, or pass bad_files='skip' (--data.bad_files skip) to leave them out; the skipped "
            "files are then listed in skipped_files.csv in the run's folder.",
        )


def _decode(path: str) -> tuple[tuple[int, int] | None, str | None]:
    """Decode one image fully; return its ``(width, height)`` or the reason it failed."""
    try:
        if os.path.getsize(path) == 0:
            return None, "empty file"
        with Image.open(path) as image:
            image.load()  # decodes every byte: a truncated file fails here, not mid-epoch
            return image.size, None
    except FileNotFoundError:
        return None, "file not found"
    except UnidentifiedImageError:
        return None, "not a readable image"
    except (OSError, SyntaxError, ValueError) as error:
        return None, f"does not decode ({error})"


def _decode_all(paths: Iterable[str], workers: int | None) -> dict[str, tuple[tuple[int, int] | None, str | None]]:
    unique = sorted(set(paths))
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        return dict(zip(unique, pool.map(_decode, unique), strict=True))


def check_samples(
    samples: pd.DataFrame,
    categories: Sequence[str] | None = None,
    workers: int | None = None,
) -> list[BadFile]:
    """Check an anomalib sample table (``image_path``, ``label_index``, ``split``, ``mask_path``, ``category``).

    Args:
        samples: The table, e.g. ``dataset.samples``; ``mask_path`` and ``category`` are optional.
        categories: Categories that must each have training and test images; ``None`` skips that check.
        workers: Decoding threads; ``None`` uses up to 8.

    Returns:
        Every problem found, image by image (an empty list when the data is clean).
    """
    masks = samples["mask_path"].fillna("").astype(str) if "mask_path" in samples else pd.Series([""] * len(samples))
    images = samples["image_path"].astype(str).tolist()
    decoded = _decode_all([*images, *(mask for mask in masks if mask)], workers)
    # A defect image needs a mask where its category has masks; a category without any has image labels only.
    if "category" in samples:
        masked_categories = set(samples["category"][(masks != "").to_numpy()])
        needs_mask = samples["category"].isin(masked_categories).tolist()
    else:
        needs_mask = [bool((masks != "").any())] * len(samples)
    problems: list[BadFile] = []
    for image, mask, label, segmentation in zip(
        images, masks, samples["label_index"].tolist(), needs_mask, strict=True
    ):
        size, reason = decoded[image]
        if reason:
            problems.append(BadFile(image, reason))
        if mask:
            mask_size, mask_reason = decoded[mask]
            if mask_reason:
                problems.append(BadFile(mask, f"mask of {image}: {mask_reason}"))
            elif size is not None and mask_size != size:
                problems.append(
                    BadFile(mask, f"mask is {mask_size[0]}x{mask_size[1]} but its image {image} is {size[0]}x{size[1]}")
                )
        elif segmentation and int(label) == 1:
            problems.append(BadFile(image, "defective image without a mask"))
    if categories is not None and "category" in samples:
        for category in categories:
            rows = samples[samples["category"] == category]
            for split in ("train", "test"):
                if not (rows["split"].astype(str).str.lower() == split).any():
                    problems.append(BadFile(str(category), f"category has no {split} image"))
    return problems


def write_skipped(bad_files: Sequence[BadFile], folder: str | Path) -> Path:
    """Write ``skipped_files.csv`` (``path``, ``reason``) into ``folder``; return its path."""
    path = Path(folder) / "skipped_files.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "reason"])
        writer.writerows((bad.path, bad.reason) for bad in bad_files)
    return path


def drop_bad_samples(samples: pd.DataFrame, bad_files: Sequence[BadFile]) -> pd.DataFrame:
    """The samples whose image or mask is not among ``bad_files``."""
    bad = {bad.path for bad in bad_files}
    keep = ~samples["image_path"].astype(str).isin(bad)
    if "mask_path" in samples:
        keep &= ~samples["mask_path"].fillna("").astype(str).isin(bad)
    return samples[keep].reset_index(drop=True)


def image_samples(folder: str | Path) -> pd.DataFrame:
    """A sample table of every image under ``folder`` (anomalib's ``Folder`` layout), for :func:`check_samples`."""
    paths = sorted(str(path) for path in Path(folder).rglob("*") if is_image_file(path))  # what Folder reads
    return pd.DataFrame({"image_path": paths, "label_index": 0, "split": ""})


def main(argv: Sequence[str] | None = None) -> int:
    """``anomalib-dcam check-data <root>``: report every bad file under a dataset root; exit 1 if there is one."""
    import argparse
    import time

    parser = argparse.ArgumentParser(
        prog="anomalib-dcam check-data",
        description="Decode every image and mask of a dataset and name every bad file (MVTec layout, as read by "
        "anomalib's MVTecAD and anomalib_dcam's MultiClassMVTec, or any folder of images, as read by Folder).",
    )
    parser.add_argument("root", type=Path, help="an MVTec-layout root (<root>/<category>/train/good) or any folder")
    parser.add_argument("--categories", nargs="+", default=None, help="MVTec categories to check (default: all)")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: up to 8)")
    args = parser.parse_args(argv)

    from anomalib_dcam.data.multiclass import MultiClassMVTecDataset, find_categories, has_masks

    start = time.perf_counter()
    if find_categories(args.root):
        try:
            dataset = MultiClassMVTecDataset(root=args.root, categories=args.categories)
        except ValueError as error:
            print(error)
            return 1
        samples, categories = dataset.samples, dataset.categories
    elif args.root.is_dir():
        samples, categories = image_samples(args.root), None
    else:
        print(f"root={str(args.root)!r} is not a folder.")
        return 1
    problems = check_samples(samples, categories, workers=args.workers)
    seconds = time.perf_counter() - start
    for bad in problems:
        print(f"{bad.path}: {bad.reason}")
    if categories is not None:
        without = [category for category in categories if not has_masks(args.root / category)]
        if without:
            print(f"Image labels only (no ground_truth/, no pixel metrics): {', '.join(without)}.")
    rate = f"{seconds / max(len(samples), 1) * 1000:.1f} s per 1,000 images"
    print(f"{len(samples)} images (and their masks) checked in {seconds:.1f} s ({rate}): {len(problems)} bad file(s).")
    return 1 if problems else 0
