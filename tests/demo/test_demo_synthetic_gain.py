"""benchmarks/synthetic_gain.py: the NeCo / control table is computed from the raw per-seed scores alone."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gain():
    spec = importlib.util.spec_from_file_location("synthetic_gain", ROOT / "benchmarks" / "synthetic_gain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _results(neco_shift: float, control_shift: float) -> dict:
    start = [20.0, 21.0, 22.0]  # per evaluation seed
    arms = {
        arm: {
            str(seed): {"100": {"hummingbird": [s + shift + 0.1 * seed for s in start]}} for seed in (0, 1, 2)
        }
        for arm, shift in (("neco", neco_shift), ("control", control_shift))
    }
    return {
        "settings": {"protocols": ["hummingbird"]},
        "scores": {"heldout": {"start": {"hummingbird": start}, **arms}},
    }


def test_difference_rows_pair_arms_by_seed(gain, tmp_path) -> None:
    rows = {r["arm"]: r for r in gain.table_rows(_results(2.0, -0.5))}
    assert rows["neco"]["gain"] == pytest.approx(2.1) and rows["control"]["gain"] == pytest.approx(-0.4)
    difference = rows["neco - control"]
    assert difference["gain"] == pytest.approx(2.5) and difference["paired_positive"] == "9/9"
    # divided by the largest spread of either arm: the evaluation-seed std of 20/21/22 (0.816)
    assert difference["gain_over_spread"] == pytest.approx(2.5 / 0.8165, rel=1e-3)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_results(2.0, -0.5)))
    assert gain.main(["--from-results", str(path)]) == 0


def test_no_ratio_where_the_spread_is_zero(gain) -> None:
    results = _results(1.0, 0.0)
    results["scores"]["heldout"]["start"]["hummingbird"] = [20.0, 20.0, 20.0]
    for arm in ("neco", "control"):
        for seed in results["scores"]["heldout"][arm].values():
            seed["100"]["hummingbird"] = [20.0 + (arm == "neco")] * 3
    rows = gain.table_rows(results)
    assert all(r["gain_over_spread"] is None for r in rows)
    assert "spread ~0" in gain.markdown(rows)
