# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Models of the anomalib-dcam plugin."""

from .dcam import Dcam

__all__ = ["Dcam"]
