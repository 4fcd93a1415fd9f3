"""`benchmarks/public_parity.py`, smallest case: one NeCo step of a tiny ViT equals the public NeCo code's.

The public code (vpariza/NeCo) is read from `../shared/refs/neco-public` beside the repository (or
`$NECO_PUBLIC_REFS`); without it these tests skip and say why.
"""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@cache
def _script():
    spec = importlib.util.spec_from_file_location("public_parity", ROOT / "benchmarks" / "public_parity.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def parity():
    script = _script()
    try:
        script.find_public_code()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    return script, script.load_public()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return _script().write_scenes_for(tmp_path_factory.mktemp("parity") / "scenes", 8, 4, 48)


def _recipe(script, **changes):
    # 4x4 / 2x2 token grids, 3x3 ROI grids (9 references), 2 images, 2 + 2 crops.
    base = script.Recipe(
        backbone="vit_tiny",
        pretrained=False,
        head_hidden=32,
        head_out=16,
        global_size=32,
        local_size=16,
        num_local=2,
        roi_size=3,
    )
    return base.__class__(**{**base.__dict__, **changes})


def test_one_step_batch_references_equal_public(parity, scenes, tmp_path: Path) -> None:
    script, pub = parity
    row = script.one_step(pub, _recipe(script), scenes, tmp_path, inject=False)
    # Same seed, same draws: neco's batch references are the public permutation, not injected.
    assert row["references_identical"]
    assert row["box_max_abs_diff_px"] < 1e-4
    assert row["loss_public"] > 0.1
    assert row["loss_abs_diff"] < 1e-5 * row["loss_public"]
    # Every trainable tensor (4 blocks x 14, patch embed 2, CLS + position 2, norm 2, head 6) got a gradient in both.
    assert row["tensors"] == 68
    assert all(g["max_abs"] > 0 for g in row["grad_diffs"].values())
    assert row["largest_rel_diff"] < 1e-4, row["largest_rel_tensor"]


def test_one_step_queue_and_registers(parity, scenes, tmp_path: Path) -> None:
    script, pub = parity
    recipe = _recipe(script, backbone="vit_tiny_reg", queue_size=32)
    # neco interpolates the position embedding of a register model like the official DINOv2-reg
    # (exact size, antialias); the public ViT like DINOv2 without registers (+0.1 offset): a real difference.
    as_is = script.one_step(pub, recipe, scenes, tmp_path, inject=True)
    assert as_is["largest_rel_diff"] > 1e-3
    matched = script.one_step(pub, recipe, scenes, tmp_path, inject=True, public_pos_embed=True)
    assert matched["queue_push_identical"]
    assert matched["loss_abs_diff"] < 1e-5 * matched["loss_public"]
    assert matched["largest_rel_diff"] < 1e-4, matched["largest_rel_tensor"]
