# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Make ``Dcam`` known to anomalib as soon as anomalib imports its model registry.

anomalib finds models by walking ``AnomalibModule.__subclasses__()`` (``get_model("Dcam")``) and jsonargparse does the
same for ``anomalib train --model Dcam``, so the plugin only has to be imported before the name is resolved. anomalib
has no plugin entry point, so the wheel ships ``anomalib_dcam_autoload.pth``, which calls :func:`install` at
interpreter start-up. :func:`install` only appends a tiny finder to ``sys.meta_path``: nothing is imported until
``anomalib.models`` itself is imported, so a plain ``python -c pass`` costs the same as without the plugin (see
docs/plugin.md for the measurement). Set ``ANOMALIB_DCAM_AUTOLOAD=0`` to switch the hook off.
"""

import os
import sys

_WATCHED_MODULE = "anomalib.models"
_PLUGIN_MODULE = "anomalib_dcam.models.dcam"
_DISABLE_VARIABLE = "ANOMALIB_DCAM_AUTOLOAD"


def expose_in_anomalib(model_class: type) -> None:
    """Expose a plugin model as an attribute of ``anomalib.models``.

    The attribute makes ``{"class_path": "Dcam"}`` work in anomalib's ``get_model`` and benchmark pipeline, which look
    class paths up on ``anomalib.models``; the short CLI name needs only the import.

    Args:
        model_class: The model class to expose, e.g. ``Dcam``.
    """
    models_module = sys.modules.get(_WATCHED_MODULE)
    if models_module is not None and not hasattr(models_module, model_class.__name__):
        setattr(models_module, model_class.__name__, model_class)


def register_with_anomalib() -> None:
    """Import the plugin's models, which registers them with anomalib (see :func:`expose_in_anomalib`)."""
    if _PLUGIN_MODULE in sys.modules:  # already imported, or being imported: it registers itself at its end
        return
    try:
        __import__(_PLUGIN_MODULE)
    except Exception as error:  # noqa: BLE001  # a broken plugin must never break anomalib itself
        import warnings

        warnings.warn(f"anomalib-dcam could not register the Dcam model: {error!r}", stacklevel=2)


class _RegisteringLoader:
    """Delegates to the real loader of ``anomalib.models`` and registers the plugin after it ran."""

    def __init__(self, loader: object) -> None:
        self._loader = loader

    def create_module(self, spec: object) -> object:
        return self._loader.create_module(spec)  # type: ignore[attr-defined]

    def exec_module(self, module: object) -> None:
        # Hand the module its real loader back, so nothing downstream ever sees this wrapper.
        module.__loader__ = self._loader  # type: ignore[attr-defined]
        if module.__spec__ is not None:  # type: ignore[attr-defined]
            module.__spec__.loader = self._loader  # type: ignore[attr-defined]
        self._loader.exec_module(module)  # type: ignore[attr-defined]
        register_with_anomalib()

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)


class _AnomalibModelsFinder:
    """A one-shot ``sys.meta_path`` finder that wraps the loader of ``anomalib.models``."""

    @classmethod
    def find_spec(cls, fullname: str, path: object = None, target: object = None) -> object:
        if fullname != _WATCHED_MODULE:
            return None
        sys.meta_path.remove(cls)
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


def install() -> None:
    """Arrange for the plugin to register itself when anomalib's model registry is imported."""
    if os.environ.get(_DISABLE_VARIABLE, "1") == "0" or _AnomalibModelsFinder in sys.meta_path:
        return
    if _WATCHED_MODULE in sys.modules:  # anomalib was imported first: register now
        register_with_anomalib()
        return
    sys.meta_path.insert(0, _AnomalibModelsFinder)
