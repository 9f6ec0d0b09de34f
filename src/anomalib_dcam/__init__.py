# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""DCAM for anomalib: attention-aware teacher-student distillation for (multi-class) anomaly detection.

The package is imported lazily so that the start-up hook (``anomalib_dcam_autoload.pth``) costs nothing until
anomalib itself is imported. ``from anomalib_dcam import Dcam`` works as usual.

Example:
    >>> from anomalib_dcam import Dcam
    >>> model = Dcam(backbone="tf_efficientnet_lite0")  # doctest: +SKIP
"""

__version__ = "0.1.0"

_LAZY_ATTRIBUTES = {
    "Dcam": "anomalib_dcam.models.dcam",
    "DcamModel": "anomalib_dcam.models.dcam",
    "DcamLoss": "anomalib_dcam.models.dcam",
}

__all__ = ["Dcam", "DcamLoss", "DcamModel", "__version__"]


def __getattr__(name: str) -> object:
    """Import the public classes on first access (PEP 562)."""
    if name in _LAZY_ATTRIBUTES:
        # __import__ rather than importlib: importing importlib would add to every interpreter start-up.
        return getattr(__import__(_LAZY_ATTRIBUTES[name], fromlist=[name]), name)
    msg = f"module 'anomalib_dcam' has no attribute {name!r}"
    raise AttributeError(msg)
