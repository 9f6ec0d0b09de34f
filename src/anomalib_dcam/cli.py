# Copyright (C) 2026 The anomalib-dcam authors
# SPDX-License-Identifier: Apache-2.0

"""``anomalib-dcam`` command: the offline demo, the benchmark and weight tools.

Training, testing and export go through anomalib's own ``anomalib`` command (``anomalib train --model Dcam ...``);
this command only adds what anomalib has no verb for.

Examples:
    anomalib-dcam demo --epochs 3
    anomalib-dcam benchmark --config configs/benchmark_industrial.yaml
    anomalib-dcam qat --ckpt_path model.ckpt --data MVTecAD --data.root ./datasets/MVTecAD --epochs 2
    anomalib-dcam weights install-hf-cache
    anomalib-dcam check-data ./datasets/MVTecAD
"""

import argparse
import sys
from collections.abc import Sequence


def _install_hf_cache(args: argparse.Namespace) -> int:
    from anomalib_dcam.weights import install_hf_cache

    path = install_hf_cache(args.cache_dir)
    print(f"tf_efficientnet_lite0 ImageNet weights installed at {path}")
    print("timm-based anomalib models now load them with pretrained=True and HF_HUB_OFFLINE=1.")
    return 0


# Sub-commands with their own argument parsers: (module with ``main(argv)``, help text). Imported only when used.
_DELEGATED_COMMANDS = {
    "demo": ("anomalib_dcam.demo", "train Dcam on an embedded texture dataset"),
    "benchmark": ("anomalib_dcam.benchmark", "compare models: quality, speed, memory, size"),
    "qat": ("anomalib_dcam.deploy.qat", "quantization-aware training to OpenVINO INT8"),
    "check-data": ("anomalib_dcam.data.preflight", "decode every image and mask of a dataset, name every bad file"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``anomalib-dcam``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _DELEGATED_COMMANDS:
        module = __import__(_DELEGATED_COMMANDS[argv[0]][0], fromlist=["main"])
        return module.main(argv[1:])

    parser = argparse.ArgumentParser(prog="anomalib-dcam", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (_, description) in _DELEGATED_COMMANDS.items():
        commands.add_parser(name, help=f"{description} (see `anomalib-dcam {name} --help`)")
    weights = commands.add_parser("weights", help="offline backbone weights")
    weights_commands = weights.add_subparsers(dest="weights_command", required=True)
    install = weights_commands.add_parser(
        "install-hf-cache",
        help="write the packaged tf_efficientnet_lite0 ImageNet weights into the Hugging Face cache",
    )
    install.add_argument("--cache-dir", default=None, help="hub cache folder (default: huggingface_hub's)")
    install.set_defaults(handler=_install_hf_cache)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
