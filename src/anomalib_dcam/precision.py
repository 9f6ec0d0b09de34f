# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""Which mixed precision pays off on the machine at hand.

Lightning's ``precision="bf16-mixed"`` runs convolutions in bfloat16 under ``torch.autocast``. On a CPU with native
bfloat16 instructions (AVX512-BF16 or AMX, i.e. Intel Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later)
oneDNN computes them much faster than in float32; on other CPUs bfloat16 is emulated and usually slower.
"""

import torch

__all__ = ["fastest_cpu_precision", "native_cpu_bf16"]


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bfloat16 convolutions natively (oneDNN's own check)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def fastest_cpu_precision() -> str:
    """Lightning ``precision`` for CPU training: ``"bf16-mixed"`` with native bfloat16, else ``"32-true"``."""
    return "bf16-mixed" if native_cpu_bf16() else "32-true"
