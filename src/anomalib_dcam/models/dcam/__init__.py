# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""DCAM model: teacher-student feature pyramid matching with training-only attention (arXiv 2405.06467).

Example:
    >>> from anomalib_dcam.models.dcam import Dcam
    >>> model = Dcam(backbone="tf_efficientnet_lite0")  # doctest: +SKIP
"""

from anomalib_dcam._autoload import expose_in_anomalib

from .anomaly_map import AnomalyMapGenerator, CombineMode
from .attention import AttentionPlacement, AttentionType
from .image_score import ImageScore
from .lightning_model import DCAM_PAPER_OPTIONS, Dcam
from .loss import DcamLoss, DcamLossOutput, Reduction
from .presets import STFPM_OPTIONS
from .torch_model import DcamModel, DcamTrainOutput

__all__ = [
    "AnomalyMapGenerator",
    "AttentionPlacement",
    "AttentionType",
    "CombineMode",
    "DCAM_PAPER_OPTIONS",
    "Dcam",
    "DcamLoss",
    "DcamLossOutput",
    "DcamModel",
    "DcamTrainOutput",
    "ImageScore",
    "Reduction",
    "STFPM_OPTIONS",
]

expose_in_anomalib(Dcam)
