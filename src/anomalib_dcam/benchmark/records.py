# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Records that say what produced them, and are reused only for exactly those settings.

A record is a small JSON file kept with the code: the fully resolved settings of a run, where and when it ran, and
its results. The settings are read from the objects that trained, after every default was applied:

- the model's class and its constructor arguments (Lightning's ``hparams``, which anomalib models save), and the same
  for its post-processor;
- the datamodule's class and constructor arguments;
- the trainer arguments, the seed and anything else the harness passes (e.g. the run's name);
- the versions of the packages that compute the result.

:func:`load_matching` returns a record only when its stored settings equal the run's: a record written before a
default changed is never reused under the same name, it is run again. The commit, whether the tree had uncommitted
changes, the machine and the date are stored as provenance and not compared (a record stays valid across commits
that do not change what it measures; a change of behaviour comes with an option, which is compared).

Example:
    >>> settings = {"model": {"class_path": "Dcam", "init_args": {"lr": 0.1}}, "seed": 0}
    >>> record = make_record(settings, results=[{"image_AUROC": 0.9}])
    >>> settings_difference(record["settings"], {**settings, "seed": 1})
    ['seed: 0 -> 1']
"""

import enum
import hashlib
import inspect
import json
import logging
import os
import platform
import subprocess
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path, PurePath
from typing import Any

__all__ = [
    "PACKAGES",
    "environment",
    "file_digest",
    "jsonable",
    "load_matching",
    "make_record",
    "object_settings",
    "provenance",
    "run_settings",
    "settings_difference",
    "summarize",
    "write_json",
    "write_record",
]

logger = logging.getLogger(__name__)

PACKAGES = (
    "anomalib",
    "anomalib-dcam",
    "torch",
    "torchvision",
    "lightning",
    "timm",
    "torchmetrics",
    "numpy",
    "openvino",
    "nncf",
)
"""Packages whose versions a record stores (and compares): those that compute a result."""


def jsonable(value: object) -> Any:
    """``value`` as plain JSON data: enums by value, paths and dtypes as strings, tuples as lists."""
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [jsonable(item) for item in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    if isinstance(value, PurePath):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def _class_path(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def object_settings(obj: object) -> dict[str, Any]:
    """The class and resolved constructor arguments of a model, post-processor or datamodule.

    Lightning modules and datamodules that save their hyper-parameters (anomalib's models do) give them with every
    default applied. For other objects, each constructor argument that the object keeps as an attribute of the same
    name is read back; the others are listed under ``unreadable``.

    Args:
        obj: The object.

    Returns:
        ``{"class_path": ..., "init_args": {...}}`` (and ``"unreadable": [...]`` where some argument is not kept).
    """
    hparams = getattr(obj, "hparams", None)
    if isinstance(hparams, Mapping) and hparams:
        return {"class_path": _class_path(obj), "init_args": jsonable(dict(hparams))}
    init_args, unreadable = {}, []
    for name, parameter in inspect.signature(type(obj).__init__).parameters.items():
        if name == "self" or parameter.kind in {parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD}:
            continue
        if hasattr(obj, name):
            init_args[name] = jsonable(getattr(obj, name))
        else:
            unreadable.append(name)
    settings: dict[str, Any] = {"class_path": _class_path(obj), "init_args": init_args}
    if unreadable:
        settings["unreadable"] = unreadable
    return settings


def environment() -> dict[str, Any]:
    """Python and the versions of :data:`PACKAGES` (``None`` for one that is not installed)."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"python": platform.python_version(), "packages": versions}


def run_settings(
    model: object,
    datamodule: object,
    trainer: Mapping[str, Any],
    seed: int | None,
    **extra: Any,
) -> dict[str, Any]:
    """Everything that decides a run's result, resolved and JSON-ready (what :func:`load_matching` compares).

    Args:
        model: The model as built for the run.
        datamodule: The datamodule as built for the run.
        trainer: The arguments the harness gives the trainer (Engine), e.g. ``max_epochs`` and ``precision``.
        seed: The run's seed.
        extra: Anything else the harness decides (e.g. ``run``, ``model_selection``).

    Returns:
        The settings.
    """
    post_processor = getattr(model, "post_processor", None)
    settings = {
        "model": object_settings(model),
        "post_processor": None if post_processor is None else object_settings(post_processor),
        "datamodule": object_settings(datamodule),
        "trainer": jsonable(dict(trainer)),
        "seed": seed,
        **jsonable(extra),
        "environment": environment(),
    }
    return jsonable(settings)


def _git(*arguments: str, cwd: Path) -> str | None:
    try:
        completed = subprocess.run(["git", *arguments], cwd=cwd, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return completed.stdout.strip()


def provenance(repository: str | Path | None = None) -> dict[str, Any]:
    """Where and when a record was made: commit, uncommitted changes, machine, processor, UTC date.

    Args:
        repository: A folder inside the git checkout; ``None`` for this package's folder.

    Returns:
        ``commit`` (``None`` outside a git checkout), ``dirty`` (uncommitted changes to tracked files), ``machine``,
        ``processor`` and ``date``.
    """
    folder = Path(repository) if repository is not None else Path(__file__).resolve().parent
    commit = _git("rev-parse", "HEAD", cwd=folder)
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=folder)
    return {
        "commit": commit,
        "dirty": None if status is None else bool(status),
        "machine": platform.node(),
        "processor": platform.processor() or platform.machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def file_digest(*paths: str | Path) -> str:
    """SHA-256 of the files' bytes, in order: a checkpoint or an IR is the same model only if its bytes are."""
    digest = hashlib.sha256()
    for path in paths:
        with Path(path).open("rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def make_record(settings: Mapping[str, Any], results: Any, **extra: Any) -> dict[str, Any]:
    """A record: the run's settings, its provenance, its results and any extra fields (e.g. timings)."""
    return {"settings": jsonable(settings), "provenance": provenance(), **jsonable(extra), "results": jsonable(results)}


def write_json(path: str | Path, content: Any) -> None:
    """Write ``content`` as indented JSON, folders created, atomically: a half-written file never looks finished."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".tmp{os.getpid()}")
    temporary.write_text(json.dumps(content, indent=2, default=str) + "\n")
    temporary.replace(path)


def write_record(path: str | Path, settings: Mapping[str, Any], results: Any, **extra: Any) -> dict[str, Any]:
    """Write :func:`make_record` to ``path`` (folders created) and return it."""
    record = make_record(settings, results, **extra)
    write_json(path, record)
    return record


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat if flat else {prefix: {}}
    return {prefix: value}


def settings_difference(stored: Any, wanted: Any) -> list[str]:
    """The settings that differ, one ``"key.path: stored -> wanted"`` line each (empty when they are equal)."""
    old, new = _flatten(stored), _flatten(wanted)
    missing = object()
    lines = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, missing), new.get(key, missing)
        if before != after:
            shown = ["(absent)" if value is missing else json.dumps(value) for value in (before, after)]
            lines.append(f"{key}: {shown[0]} -> {shown[1]}")
    return lines


def summarize(differences: list[str], shown: int = 8) -> str:
    """The first ``shown`` lines of :func:`settings_difference`, joined, and how many more there are."""
    more = f"; and {len(differences) - shown} more" if len(differences) > shown else ""
    return "; ".join(differences[:shown]) + more


def load_matching(path: str | Path, settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """The record at ``path`` if it was produced with exactly ``settings``, else ``None`` (the run is due).

    A missing file, a file that is not a record (no ``settings``, e.g. written before records stored them) and a
    record whose settings differ all give ``None``; the last two are logged with the reason.

    Args:
        path: The record's path.
        settings: The run's settings (:func:`run_settings`).

    Returns:
        The stored record, or ``None``.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        logger.warning("Record %s is not valid JSON (%s); the run is due again.", path, error)
        return None
    if not isinstance(record, dict) or "settings" not in record:
        logger.warning("Record %s stores no settings; the run is due again.", path)
        return None
    differences = settings_difference(record["settings"], jsonable(settings))
    if differences:
        logger.warning(
            "Record %s was produced with other settings (%s); the run is due again.", path, summarize(differences)
        )
        return None
    return record
