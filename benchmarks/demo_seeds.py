# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""The embedded demo (``make demo``) over several seeds and Dcam settings: mean ± std and the paired difference.

Each (variant, seed) trains the demo exactly as ``anomalib-dcam demo --seed <seed>`` does (brick texture, 5 epochs,
100 normal training images, 256 px, fp32, teacher cache in memory, channels-last), with the variant's Dcam options on
top of Dcam's defaults. The seed picks the crops, the test defects and the training run, so the paired difference of
two variants at one seed compares them on the same images. Every run writes ``<records>/<variant>_s<seed>.json``
(a record of :mod:`anomalib_dcam.benchmark.records`: the resolved Dcam settings, the demo's own settings, the
metrics and the fit time) and is skipped only when that record holds exactly the same settings, so the study can be
stopped and resumed, and a changed default trains again.

Example:
    python benchmarks/demo_seeds.py --seeds 0 1 2 --variants former default
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from runs import ATTENTION_DEFAULTS, FORMER_DEFAULTS

# Variant -> Dcam options on top of Dcam's current defaults; the recorded ablations are of DCAM's attention model.
VARIANTS: dict[str, dict] = {
    "default": {},
    "default_anomalib_defects": {"synthetic_anomaly_generator": "anomalib"},  # the default of 2026-12-04
    "former": FORMER_DEFAULTS,
    "readout_only": {**ATTENTION_DEFAULTS, "synthetic_anomaly_probability": 0.0},
    "p0.25": {**ATTENTION_DEFAULTS, "synthetic_anomaly_probability": 0.25},
    "p0.5_blend0.5": {**ATTENTION_DEFAULTS, "synthetic_anomaly_blend": (0.5, 1.0)},
    "push": {**ATTENTION_DEFAULTS, "push_weight": 1.0},
    "denoise_attention": ATTENTION_DEFAULTS,  # the defaults before the current: DCAM's attention and loss terms
}
METRICS = ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_F1Score", "seconds")


def demo_settings(variant: str, seed: int, epochs: int, num_train: int) -> dict:
    """Everything that decides a (variant, seed) result: the demo's settings and the resolved Dcam it trains."""
    from anomalib_dcam import Dcam
    from anomalib_dcam.benchmark.records import object_settings

    # The Dcam that run_demo builds (its pre-processor aside, which only sets the image size below).
    model = Dcam(backbone="tf_efficientnet_lite0", teacher_cache="memory", channels_last=True, **VARIANTS[variant])
    dcam = object_settings(model)
    dcam["init_args"].pop("pre_processor", None)
    return {"variant": variant, "seed": seed, "epochs": epochs, "num_train": num_train, "image_size": 256, "dcam": dcam}


def run(variant: str, seed: int, records: Path, epochs: int, num_train: int) -> dict:
    """Train and test the demo for one (variant, seed) unless it is recorded with the same settings."""
    from anomalib_dcam.benchmark.records import load_matching, write_record
    from anomalib_dcam.demo import run_demo

    path = records / f"{variant}_s{seed}.json"
    settings = demo_settings(variant, seed, epochs, num_train)
    record = load_matching(path, settings)
    if record is not None:
        return record["results"]
    print(f"demo {variant} seed {seed}: training ({epochs} epochs)", flush=True)
    with tempfile.TemporaryDirectory() as output:
        start = time.perf_counter()
        metrics = run_demo(Path(output), epochs=epochs, num_train=num_train, seed=seed, dcam_options=VARIANTS[variant])
        metrics["seconds"] = time.perf_counter() - start
    return write_record(path, settings, metrics)["results"]


def main() -> None:
    """Run every missing (variant, seed), then print each metric's mean ± std and paired difference to the baseline."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["former", "default"], choices=sorted(VARIANTS))
    parser.add_argument("--baseline", default="former", choices=sorted(VARIANTS))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--num-train", type=int, default=100, help="as `anomalib-dcam demo` (default: %(default)s)")
    parser.add_argument("--records", type=Path, default=Path(__file__).parent / "records" / "demo")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before the report's imports, which import huggingface_hub
    from anomalib_dcam.benchmark.report import seed_tables

    variants = [args.baseline, *[variant for variant in args.variants if variant != args.baseline]]
    records = {  # seed by seed, so that a drift of the machine spreads over every variant
        (variant, seed): run(variant, seed, args.records, args.epochs, args.num_train)
        for seed in args.seeds
        for variant in variants
    }
    values = {variant: {seed: records[variant, seed] for seed in args.seeds} for variant in variants}
    summary, paired = seed_tables(values, METRICS, args.baseline, per_seed_column="image_AUROC", label="variant")
    print(f"\nbrick demo, {args.epochs} epochs, seeds {args.seeds}: mean ± std over seeds\n\n{summary}")
    print(f"\npaired difference to {args.baseline}\n\n{paired}")


if __name__ == "__main__":
    main()
