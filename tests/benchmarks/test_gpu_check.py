"""`benchmarks/gpu_check.py --quick` on the CPU: every section writes its rows, CUDA-only rows say so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_quick_writes_json_and_table(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, env=env, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    table = (tmp_path / "gpu_check.md").read_text()
    assert report["quick"] is True
    assert set(report["targets"]) == {
        "sort_loss_share", "speedup", "peak_memory", "coco_hours", "voc_minutes", "grad_error"
    }  # fmt: skip
    rows = report["rows"]
    by_check = {(r["section"], r["check"]): r for r in rows}
    errors = [
        f"{r['section']} / {r['check']}: {r.get('error', '')[-600:]}" for r in rows if r["kind"] == "error"
    ]
    assert not errors, "\n".join(errors)
    assert {r["section"] for r in rows} == {
        "environment",
        "pytest -m gpu",
        "sorting",
        "training step",
        "hummingbird",
        "finetune",
        "text-align",
    }
    if not torch.cuda.is_available():
        assert by_check[("pytest -m gpu", "CUDA tests")]["value"] == "skipped: no CUDA"
        assert by_check[("environment", "GPU")]["value"] == "none (no CUDA)"
    # Nothing is judged against the GPU targets in a --quick run.
    assert all(r["pass"] is None for r in rows)
    sorting = [r for r in rows if r["section"] == "sorting" and r["check"].startswith("fwd+bwd")]
    assert len(sorting) == 2 and all(r["grad_rel_error"] < 1e-4 for r in sorting)
    assert all(r["neco"]["seconds"] > 0 and r["diffsort"]["seconds"] > 0 for r in sorting)
    step_checks = {r["check"] for r in rows if r["section"] == "training step"}
    assert {
        "neco / public-code images/s",
        "sort + loss share of the neco step",
        "neco peak memory",
    } <= step_checks
    share = by_check[("training step", "sort + loss share of the neco step")]
    assert 0 < share["share"] < 1 and 0 <= share["profiler_sort_share"] < 1
    projected = [r for r in rows if r["kind"] == "projected"]
    assert {r["section"] for r in projected} == {"training step", "hummingbird", "finetune", "text-align"}
    finetune = [r for r in rows if r["section"] == "finetune" and r["kind"] == "measured"]
    assert len(finetune) == 1 and finetune[0]["step_s"] > 0 and finetune[0]["images_per_s"] > 0
    hummingbird = [r for r in rows if r["section"] == "hummingbird" and r["kind"] == "measured"]
    assert len(hummingbird) == 1 and hummingbird[0]["memory"] > 0
    # The markdown table has the header and one line per row, and is what the script printed.
    lines = table.strip().splitlines()
    assert lines[2] == "| section | check | value | kind | target | pass |"
    assert len(lines) == 4 + len(rows)
    assert table.strip().splitlines()[-1] in result.stdout


def _load_gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_records_a_failing_section_and_keeps_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu_check = _load_gpu_check()

    def broken(ctx):
        raise RuntimeError("out of memory\nsecond line")

    def fine(ctx):
        row = gpu_check._row("fine", "value", "1.0 x")
        return [gpu_check._judge(row, "speedup", True, ctx["judged"])]

    monkeypatch.setattr(gpu_check, "SECTIONS", [("environment", broken), ("sorting", fine)])
    assert gpu_check.main(["--quick", "--out", str(tmp_path), "--sections", "environment,sorting"]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    first, second = report["rows"]
    assert first["kind"] == "error" and first["value"] == "error: RuntimeError: out of memory"
    assert "RuntimeError" in first["error"]
    assert second["value"] == "1.0 x" and second["pass"] is None  # --quick: never judged
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| environment | environment | error: RuntimeError: out of memory | error | - | n/a |" in table
    with pytest.raises(SystemExit):
        gpu_check.main(["--quick", "--out", str(tmp_path), "--sections", "nonsense"])
