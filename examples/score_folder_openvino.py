# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

r"""Score a folder of images with an exported Dcam OpenVINO IR: a CSV of scores and a heat map per image.

The IR comes from ``anomalib export --model Dcam --export_type openvino ...``, from
:func:`anomalib_dcam.deploy.export_openvino` or from ``python -m anomalib_dcam.deploy.qat``. Images are read with
anomalib's reader (RGB, grayscale repeated, values in [0, 1]), resized to the IR's input size when it is static
(antialiased bilinear, as anomalib's data pipeline does), and scored with the plugin's inferencer
(:func:`anomalib_dcam.deploy.openvino_inferencer`: anomalib's ``OpenVINOInferencer`` plus the recognised product) on
the CPU at the requested precision hint. ``f32`` (the default) computes the FP32 IR in float32: its scores equal the
PyTorch FP32 model's up to rounding, not bit for bit (OpenVINO's kernels add in another order; tests/test_deployment.py
checks scores and anomaly maps within 1e-4). ``default`` lets bf16-capable CPUs compute in bf16, which shifts scores.

Writes:
    ``<output>/scores.csv``: ``image``, ``pred_score`` (in (0, 1), 0.5 at the product's threshold), ``pred_label``
    (the model's decision: above the threshold stored in the model, or an unknown product) and ``category`` (the
    product a unified model recognised and whose threshold it applied, ``unknown`` for another product; empty for a
    one-product model).
    ``<output>/heatmaps/<image path relative to --images>.png``: the anomaly map over the image.

Example:
    python examples/score_folder_openvino.py --model results/weights/openvino/model.xml \
        --images datasets/MVTecAD/bottle/test --output results/scores --precision-hint f32
"""

import argparse
import csv
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, in a stable order."""
    return sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)


def load_image(path: Path, size: tuple[int, int] | None) -> "torch.Tensor":
    """Read an image as a ``(3, H, W)`` float tensor in [0, 1], resized to ``size`` when given."""
    import torch
    from anomalib.data.utils import read_image

    image = read_image(path, as_tensor=True)
    if size is not None and tuple(image.shape[-2:]) != tuple(size):
        image = torch.nn.functional.interpolate(
            image[None],
            size=size,
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )[0]
    return image


def save_heatmap(image: "torch.Tensor", anomaly_map: "np.ndarray", path: Path) -> None:
    """Overlay the anomaly map (values in (0, 1) after the model's score map, 0.5 at the pixel threshold), as a PNG."""
    import numpy as np
    from anomalib.visualization.image.functional import overlay_image, visualize_anomaly_map
    from torchvision.transforms.v2.functional import to_pil_image

    heat = visualize_anomaly_map(np.clip(anomaly_map.reshape(anomaly_map.shape[-2:]), 0.0, 1.0), colormap=True)
    base = to_pil_image(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay_image(base, heat.resize(base.size), alpha=0.5).convert("RGB").save(path)


def score_folder(
    model_path: Path,
    images_dir: Path,
    output: Path,
    precision_hint: str = "f32",
    device: str = "CPU",
) -> Path:
    """Score every image under ``images_dir``; return the path of the CSV.

    Raises:
        FileNotFoundError: If the model or the folder does not exist, or the folder holds no image.
    """
    from anomalib_dcam.deploy import openvino_inferencer, static_input_size

    if not images_dir.is_dir():
        msg = f"--images {str(images_dir)!r} is not a folder."
        raise FileNotFoundError(msg)
    paths = find_images(images_dir)
    if not paths:
        msg = f"--images {str(images_dir)!r} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))})."
        raise FileNotFoundError(msg)
    inferencer = openvino_inferencer(model_path, device=device, precision_hint=precision_hint)
    size = static_input_size(model_path)
    output.mkdir(parents=True, exist_ok=True)
    csv_path = output / "scores.csv"
    start = time.perf_counter()
    with csv_path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["image", "pred_score", "pred_label", "category"])
        for path in paths:
            image = load_image(path, size)
            prediction = inferencer.predict(image)
            score = float(prediction.pred_score.reshape(-1)[0])
            label = "" if prediction.pred_label is None else int(prediction.pred_label.reshape(-1)[0])
            # A unified model names the product it recognised ("unknown" when it is none of its products).
            category = getattr(prediction, "pred_category_name", [""])[0]
            relative = path.relative_to(images_dir)
            writer.writerow([relative.as_posix(), f"{score:.6f}", label, category])
            save_heatmap(image, prediction.anomaly_map, (output / "heatmaps" / relative).with_suffix(".png"))
    elapsed = time.perf_counter() - start
    print(
        f"Scored {len(paths)} images in {elapsed:.1f} s on {device} (INFERENCE_PRECISION_HINT={precision_hint}, "
        f"including reading, resizing and writing heat maps)",
    )
    return csv_path


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="exported OpenVINO IR (.xml)")
    parser.add_argument("--images", type=Path, required=True, help="folder of images (searched recursively)")
    parser.add_argument("--output", type=Path, default=Path("results/openvino_scores"), help="output folder")
    parser.add_argument(
        "--precision-hint",
        default="f32",
        choices=["f32", "bf16", "f16", "default"],
        help="OpenVINO INFERENCE_PRECISION_HINT (default: f32, parity with PyTorch)",
    )
    parser.add_argument("--device", default="CPU", help="OpenVINO device (default: CPU)")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"--model {str(args.model)!r} does not exist; pass the exported .xml file")
    try:
        csv_path = score_folder(args.model, args.images, args.output, args.precision_hint, args.device)
    except FileNotFoundError as error:
        parser.error(str(error))
    print(f"Scores: {csv_path}\nHeat maps: {args.output / 'heatmaps'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
