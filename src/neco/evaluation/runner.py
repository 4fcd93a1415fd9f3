"""Run any registered protocol by name: settings checked, one result dict in the schema, figures.

The CLI (`neco eval`), the demo, the training callbacks and the benchmarks all call `evaluate`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from neco.evaluation.features import Features
from neco.evaluation.options import validate
from neco.evaluation.protocol import EvalData, ProtocolOutput, RunContext, RunSettings
from neco.evaluation.registry import get_protocol
from neco.evaluation.schema import SCHEMA_VERSION, environment, jsonable, validate_result, write_result
from neco.utils.io import ensure_writable_dir

__all__ = [
    "Evaluation",
    "evaluate",
    "resolve_device",
    "check_divisible",
    "check_result_folder",
    "same_backbone",
    "default_out_dir",
]


@dataclass
class Evaluation:
    """A finished evaluation: the schema result (not yet written) and the protocol's output."""

    result: dict[str, Any]
    output: ProtocolOutput

    @property
    def examples(self) -> Any:
        """The examples the protocol kept for its figures (or None)."""
        return self.output.examples

    @property
    def headline(self) -> float:
        """The protocol's headline value."""
        return float(self.result["headline"]["value"])


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto'/None -> cuda when available else cpu; anything else is passed to torch.device."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`--device` must be an available device but is {device} (no CUDA device found)")
    return device


def check_divisible(input_size: int, patch_size: int) -> None:
    """Raise unless the square input size is a whole number of patches."""
    if input_size % patch_size:
        raise ValueError(
            f"`--input-size` must be a multiple of the patch size {patch_size} but is {input_size} "
            f"(e.g. {input_size // patch_size * patch_size} or {(input_size // patch_size + 1) * patch_size})"
        )


def same_backbone(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two result files' `backbone` entries name the same weights (checksum, else name and file)."""
    if a.get("sha256") and b.get("sha256"):
        return a["sha256"] == b["sha256"]
    return (a.get("name"), a.get("weights")) == (b.get("name"), b.get("weights"))


def check_result_folder(out_dir: str | Path, name: str, backbone: dict[str, Any] | None) -> Path:
    """Create `out_dir` (writable) before any feature is computed, remove orphaned `.*.tmp` writes, and refuse
    to overwrite `<name>.json` of another backbone (a rerun of the same backbone replaces its result)."""
    out_dir = ensure_writable_dir(out_dir, "--out")
    for orphan in out_dir.glob(".*.tmp"):  # figures / results of a killed run, never renamed into place
        if orphan.is_file():
            orphan.unlink(missing_ok=True)
    existing = out_dir / f"{name}.json"
    if backbone is not None and existing.is_file():
        try:
            previous = json.loads(existing.read_text()).get("backbone") or {}
        except (OSError, ValueError, AttributeError):
            previous = {}
        if previous and not same_backbone(previous, backbone):
            raise FileExistsError(
                f"--out {out_dir}: {existing.name} holds the result of another backbone ({previous.get('name')}, "
                f"weights {previous.get('weights')}); choose another --out or remove that file"
            )
    return out_dir


def evaluate(
    name: str,
    features: Features,
    data: EvalData,
    settings: Any = None,
    run: RunSettings | None = None,
    *,
    backbone: dict[str, Any] | None = None,
    out_dir: str | Path | None = None,
    command: list[str] | None = None,
    **run_overrides: Any,
) -> Evaluation:
    """Run protocol `name` on `features` and `data`; with `out_dir`, write `<name>.json` and the figures.

    Args:
        name: a registered protocol (`protocol_names()`).
        features: the backbone's patch grids (`Features.of_model(model)`).
        data: the datasets (`Protocol.load_data` or built by hand).
        settings: the protocol's settings dataclass (None: its published defaults).
        run: the shared run settings; `run_overrides` replace single fields (e.g. `seed=1`).
        backbone: identity for the result file (`load_backbone` / `backbone_identity`).
        out_dir: where to write the result and figures (None: nothing is written).
        command: argv recorded in the result.
    """
    protocol = get_protocol(name)
    settings = protocol.settings_class() if settings is None else settings
    if not isinstance(settings, protocol.settings_class):
        raise TypeError(
            f"settings of {name} must be {protocol.settings_class.__name__} but are {type(settings).__name__}"
        )
    run = dataclasses.replace(run or RunSettings(), **run_overrides)
    validate(run)
    validate(settings)  # before any feature is computed
    if out_dir is not None:
        out_dir = check_result_folder(out_dir, name, backbone)
    if protocol.needs_train and data.train is None:
        raise ValueError(f"protocol {name} needs a training split but `data.train` is None")
    if protocol.needs_attention:
        features.require_attention()
    input_size = run.input_size or protocol.default_input_size(features.patch_size)
    check_divisible(input_size, features.patch_size)
    ctx = RunContext(run, input_size, features.device)
    ctx.out_dir = None if out_dir is None else Path(out_dir)
    if run.skip_bad_images:
        data = _without_unreadable_images(data, ctx)
    with ctx.timer("total"):
        try:
            output = protocol.run(features, data, settings, ctx)
        except ValueError as err:
            _raise_unwrapped(err)
            raise
    headline_name, headline_value = protocol.headline(output.metrics)
    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "protocol": name,
        "settings": {
            **dataclasses.asdict(settings),
            **output.settings,
            "input_size": input_size,
            "seed": run.seed,
            "precision": features.precision,
            "skip_bad_images": run.skip_bad_images,
        },
        "dataset": data.describe(),
        "backbone": backbone or {"name": features.name, "sha256": None},
        "metrics": output.metrics,
        "headline": {"name": headline_name, "value": headline_value},
        "timings": ctx.timings,
        "figures": [],
        "warnings": list(ctx.warnings),
        "environment": environment(features.device),
        "command": command,
    }
    result = jsonable(result)
    validate_result(result)
    if out_dir is not None:
        result["figures"] = [Path(p).name for p in protocol.figures(output, features, data, out_dir)]
        write_result(out_dir / f"{name}.json", result)
    return Evaluation(result=result, output=output)


def _without_unreadable_images(data: EvalData, ctx: RunContext) -> EvalData:
    """`data` without the items whose image cannot be read (`--skip-bad-images`); each skip is a warning."""
    splits = {}
    for role in ("val", "train"):
        dataset = getattr(data, role)
        if hasattr(dataset, "without_unreadable_images"):  # a missing split (None) is kept as it is
            splits[role], skipped = dataset.without_unreadable_images()
            if skipped:
                ctx.warn(
                    f"--skip-bad-images: left out {len(skipped)} unreadable {role} image(s), e.g. {skipped[0]}"
                )
    return dataclasses.replace(data, **splits)


def _raise_unwrapped(err: ValueError) -> None:
    """Raise the message of a ValueError raised in a DataLoader worker, without the worker's traceback text."""
    text = str(err)
    last = [line for line in text.strip().splitlines() if line.startswith("ValueError: ")]
    if "DataLoader worker" in text and "Traceback" in text and last:
        raise ValueError(last[-1].removeprefix("ValueError: ")) from err


def default_out_dir(protocol: str, backbone: str, weights: str | None, identity: dict[str, Any]) -> Path:
    """eval_out/<label>/<protocol>: a registry name, or the run and step of a checkpoint, never a generic
    file name (two runs' `last.ckpt`); suffixed `_2`, `_3`, ... where another backbone's result is."""
    file = weights or (backbone if Path(backbone).suffix else None)
    if file is None:
        label = backbone
    else:
        # `last.ckpt` is a link: its target names the step; a run's checkpoints sit in <run>/checkpoints/
        path = Path(file).expanduser().resolve()
        label = f"{path.parent.parent.name}_{path.stem}" if path.parent.name == "checkpoints" else path.stem
        if weights:
            label = f"{backbone}_{label}"
    base = Path("eval_out") / re.sub(r"[^A-Za-z0-9_.+-]", "_", label)
    for index in range(1, 1000):
        out = (base if index == 1 else base.with_name(f"{base.name}_{index}")) / protocol
        existing = out / f"{protocol}.json"
        if not existing.is_file():
            return out
        try:
            previous = json.loads(existing.read_text()).get("backbone") or {}
        except (OSError, ValueError, AttributeError):
            continue
        if same_backbone(previous, identity):
            return out
    raise FileExistsError(f"{base}: 999 result folders of other backbones; pass --out")
