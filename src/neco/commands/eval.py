"""`neco eval PROTOCOL`: one handler for every registered evaluation protocol.

The options of each protocol come from its settings dataclass; the data, backbone and run options
are shared. The handler sets up threads, device and seed, loads the data and the backbone once,
runs the protocol through `neco.evaluation.evaluate` and writes `<protocol>.json` and the figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

# register() needs the protocols (and so torch) and the dataset names to build its options: nothing
# would be gained by importing inside the functions
import torch

from neco.commands._backbone import add_backbone_options, load_backbone_of
from neco.data import SEGMENTATION_DATASETS
from neco.evaluation import Features, RunSettings, evaluate, get_protocol, protocol_names
from neco.evaluation.options import add_options, from_args
from neco.evaluation.runner import default_out_dir, resolve_device
from neco.utils.logging import get_logger

__all__ = ["register"]

_FORMATTER = argparse.RawDescriptionHelpFormatter


def _shared_options(parser: argparse.ArgumentParser, protocol: Any) -> None:
    names = protocol.datasets or tuple(sorted(SEGMENTATION_DATASETS))
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, choices=names, help=f"dataset layout ({', '.join(names)})")
    data.add_argument("--data-root", required=True, type=Path, help="dataset root folder")
    data.add_argument(
        "--val-split", default=protocol.val_split, help=f"split scored (default: {protocol.val_split})"
    )
    if protocol.needs_train:
        voc = protocol.default_train_split("voc")
        default = "train" if voc == "train" else f"{voc} for voc, else train"
        data.add_argument("--train-split", help=f"training split (default: {default})")
    add_backbone_options(parser.add_argument_group("backbone"))
    run = parser.add_argument_group("run")
    add_options(run, RunSettings)
    run.add_argument(
        "--out",
        type=Path,
        help="output folder (default: eval_out/<backbone or run_step>/<protocol>; another backbone's result "
        "there is never overwritten)",
    )


def register(subparsers: Any) -> None:
    """Add `neco eval` with one sub-command per registered protocol."""
    names = protocol_names()
    parser = subparsers.add_parser(
        "eval",
        help=f"dense evaluations of a backbone ({', '.join(names)})",
        description="Evaluate the frozen patch features of a backbone or NeCo checkpoint with a dense protocol. "
        "Each protocol writes <protocol>.json (docs/evaluation.md, 'Result files') and PNG figures.",
    )
    protocols = parser.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)
    for name in names:
        protocol = get_protocol(name)
        sub = protocols.add_parser(
            name, help=protocol.summary, description=protocol.summary, formatter_class=_FORMATTER
        )
        _shared_options(sub, protocol)
        add_options(sub.add_argument_group(name), protocol.settings_class)
        sub.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    log = get_logger("neco.eval")
    protocol = get_protocol(args.protocol)
    if args.protocol == "finetune":
        # registers the Lightning trainer of the protocol; only this protocol pays for Lightning's import
        import neco.training.finetune  # noqa: F401
    # from_args validates: every option is checked before data or weights are read
    settings = from_args(protocol.settings_class, args)
    run = from_args(RunSettings, args)
    device = resolve_device(run.device)
    data = protocol.load_data(
        args.dataset, args.data_root, getattr(args, "train_split", None), args.val_split, settings
    )
    torch.manual_seed(run.seed)  # a --random-init backbone is then reproducible (same checksum)
    model, identity = load_backbone_of(args)
    features = Features.of_model(model, device, run.precision)
    out = args.out or default_out_dir(args.protocol, args.backbone, args.weights, identity)
    # "val (4)" where the role is the split's name, "train: trainaug (1464)" where it is not
    splits = ", ".join(
        f"{'' if role == v['split'] else role + ': '}{v['split']} ({v['num_images']})"
        for role, v in data.describe()["splits"].items()
    )
    log.info(f"{args.protocol}: {identity['name']} on {args.dataset} {splits}")
    evaluation = evaluate(
        args.protocol, features, data, settings, run, backbone=identity, out_dir=out, command=sys.argv[1:]
    )
    for warning in evaluation.result["warnings"]:
        log.warning(warning)
    headline = evaluation.result["headline"]
    value = "n/a" if headline["value"] is None else f"{headline['value']:.2f}"
    skipped = sum(len(s.get("skipped_images", [])) for s in evaluation.result["dataset"]["splits"].values())
    print(
        f"{args.protocol} {identity['name']} on {args.dataset}/{args.val_split}: {headline['name']} {value} "
        f"-> {out / (args.protocol + '.json')} ({skipped} unreadable images skipped)"
    )
    return 0
