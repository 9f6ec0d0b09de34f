# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Make ``Dcam`` known to anomalib as soon as anomalib imports its model registry.

anomalib finds models by walking ``AnomalibModule.__subclasses__()`` (``get_model("Dcam")``) and jsonargparse does the
same for ``anomalib train --model Dcam``, so the plugin only has to be imported before the name is resolved. anomalib
has no plugin entry point, so the wheel ships ``anomalib_dcam_autoload.pth``. At interpreter start-up that file puts
a finder on ``sys.meta_path`` that imports nothing (not even this module) until ``anomalib.models`` is imported; then
it calls :func:`find_spec` here, which registers the plugin right after anomalib's model registry has run. A plain
``python -c pass`` therefore costs the same as without the plugin (docs/plugin.md has the measurement). Set
``ANOMALIB_DCAM_AUTOLOAD=0`` to switch the hook off.
"""

import sys

_WATCHED_MODULE = "anomalib.models"
_PLUGIN_MODULE = "anomalib_dcam.models.dcam"
_START_UP_FINDER = "AnomalibDcamAutoload"  # name of the finder class that anomalib_dcam_autoload.pth creates


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


def find_spec(fullname: str, path: object = None, target: object = None) -> object:
    """Find the real spec of ``anomalib.models`` and wrap its loader so that the plugin registers after it ran.

    Called by the start-up finder of ``anomalib_dcam_autoload.pth`` when ``anomalib.models`` is imported; it removes
    that finder, so this runs once.

    Args:
        fullname: Name of the module being imported (``anomalib.models``).
        path: Parent package's ``__path__``.
        target: Module object being reloaded, if any.

    Returns:
        The module spec found by the remaining finders, or ``None``.
    """
    sys.meta_path[:] = [finder for finder in sys.meta_path if getattr(finder, "__name__", "") != _START_UP_FINDER]
    for finder in sys.meta_path:
        finder_find_spec = getattr(finder, "find_spec", None)
        spec = finder_find_spec(fullname, path, target) if finder_find_spec else None
        if spec is not None:
            if spec.loader is not None:
                spec.loader = _RegisteringLoader(spec.loader)
            return spec
    return None
