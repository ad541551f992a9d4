"""`seratio info`: size and SE widths of a configuration, without building data or training."""

from __future__ import annotations

import argparse
import json

from seratio.architecture import ModelConfig, count_macs, count_params, format_rr, parse_rr, se_hidden


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="parameters, MACs and SE hidden widths of a configuration",
        description="Print parameters, forward MACs per image (convs and FCs) and the SE hidden width per stage.",
    )
    parser.add_argument("--rr", default="none", help="reduction ratio per stage, e.g. 8,2,16, or 'none' (default: none)")
    parser.add_argument("--depth", type=int, default=50, help="6n+2 layers (default: 50)")
    parser.add_argument("--classes", type=int, default=10, help="number of output classes (default: 10)")
    parser.add_argument("--json", action="store_true", help="print JSON with keys params, macs, se_hidden")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = ModelConfig(depth=args.depth, rr=parse_rr(args.rr), num_classes=args.classes)
    info = {"params": count_params(config), "macs": count_macs(config), "se_hidden": se_hidden(config)}
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"SE-ResNet depth {config.depth} (n = {config.blocks_per_stage}), rr {format_rr(config.rr)}, {config.num_classes} classes")
    print(f"parameters  {info['params']:,}")
    print(f"MACs/image  {info['macs']:,}")
    for stage, width in enumerate(info["se_hidden"], start=1):
        print(f"stage {stage}     SE hidden width {'none' if width is None else width}")
    return 0
