"""`neco demo --quick` runs end to end and writes the report files with finite, in-range numbers."""

from __future__ import annotations

import json
import math

import pytest

from neco.cli import main


@pytest.mark.slow
def test_quick_demo_writes_reports(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    for name in ("report.html", "report.md", "results.json", "pca.png", "segmentation.png", "retrieval.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert set(results["evaluations"]) == {"hummingbird", "linear", "overcluster"}
    for evaluation in results["evaluations"].values():
        for when in ("before", "after"):
            stats = evaluation[when]
            assert math.isfinite(stats["miou_mean"]) and 0.0 <= stats["miou_mean"] <= 100.0
            assert math.isfinite(stats["miou_std"]) and stats["miou_std"] >= 0.0
            assert len(stats["miou_per_seed"]) == 3
    assert results["training"]["steps"] >= 1
    report = (out / "report.md").read_text()
    assert "Hummingbird dense NN retrieval" in report
    assert (
        report.split("\n")[2].startswith("**NeCo ") and "Hummingbird retrieval by" in report
    )  # the answer first
    # the loss is shown next to the collapse diagnostics the trainer logged
    assert (out / "diagnostics.png").is_file() and "diagnostics" in results["figures"]
    diagnostics = results["training"]["diagnostics"]
    assert {"teacher_perm_max", "student_perm_max", "mean_pairwise_cosine", "effective_rank"} <= set(
        diagnostics
    )
    assert 0 < diagnostics["teacher_perm_max"][-1] <= 1 and -1 <= diagnostics["mean_pairwise_cosine"][0] <= 1
    # A rerun into the same folder reuses the generated scenes (same settings file, no error).
    assert (out / "scenes" / "scenes.json").is_file()


def test_demo_rejects_unknown_backbone(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path / "d"), "--backbone", "not_a_vit"]) == 2
    err = capsys.readouterr().err
    assert "not_a_vit" in err and "vit_tiny_scenes" in err


def test_demo_rejects_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["demo", "--quick", "--out", str(blocker / "sub")]) == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.parametrize("option,value", [("--lr", "-1e-4"), ("--teacher-steepness", "0")])
def test_demo_rejects_bad_training_options_before_evaluating(tmp_path, capsys, option, value):
    out = tmp_path / "d"
    assert main(["demo", "--quick", "--out", str(out), f"{option}={value}"]) == 2
    assert option in capsys.readouterr().err
    assert not (out / "scenes").exists()  # nothing was generated or evaluated
