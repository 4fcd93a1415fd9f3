"""`neco eval unsupervised` and `neco eval attention` end to end on tiny synthetic scenes."""

from __future__ import annotations

import json

import pytest

from neco.cli import main
from neco.data.synthetic import write_scenes

RUN = ["--input-size", "64", "--num-workers", "0", "--no-progress", "--batch-size", "8", "--threads", "2"]
SMALL = ["--cbfe-k", "30", "--cd-ks", "10", "20", "--trials", "4", "--cd-seeds", "2", "--fg-seeds", "2"]
SMALL += ["--target-size", "32", "--niter", "10", "--pca-dim", "16", "--num-figures", "2"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_scenes(tmp_path_factory.mktemp("scenes") / "s", 16, 6, 64, 0, progress=False)


def test_unsupervised_cli_end_to_end(scenes, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["eval", "unsupervised", "--dataset", "scenes", "--data-root", str(scenes), "--out", str(out)]
    rc = main([*args, "--backbone", "vit_tiny_scenes", *RUN, *SMALL])
    assert rc == 0
    assert "cd miou_mean" in capsys.readouterr().out
    result = json.loads((out / "unsupervised.json").read_text())
    assert result["backbone"]["name"] == "vit_tiny_scenes"
    splits = result["dataset"]["splits"]
    assert splits["train"]["num_images"] == 16 and splits["val"]["num_images"] == 6
    settings = result["settings"]
    assert settings["cbfe_k"] == 30 and 0.55 * 30 <= settings["cbfe_fit"]["cut"] <= 0.75 * 30
    assert settings["mass"] == 0.6 and settings["min_component"] == 4
    metrics = result["metrics"]
    assert len(metrics["cbfe"]["miou_per_seed"]) == 2 and len(metrics["cd"]["miou_per_seed"]) == 2
    assert metrics["cd"]["hyper_parameters"]["k"] in (10, 20)
    assert all(n >= 1 for n in metrics["cd"]["num_communities_per_seed"])
    for value in (metrics["cbfe"]["miou_mean"], metrics["cd"]["miou_mean"]):
        assert 0.0 < value <= 100.0
    assert len(result["figures"]) == 4
    for figure in result["figures"]:
        assert (out / figure).stat().st_size > 0


def test_attention_cli_with_registers(scenes, tmp_path, capsys):
    out = tmp_path / "att"
    args = ["eval", "attention", "--dataset", "scenes", "--data-root", str(scenes), "--out", str(out)]
    rc = main([*args, "--backbone", "vit_tiny_reg", "--random-init", *RUN, "--num-figures", "2"])
    assert rc == 0
    assert "head_merged jaccard" in capsys.readouterr().out
    result = json.loads((out / "attention.json").read_text())
    assert result["settings"]["num_register_tokens"] == 4 and result["settings"]["num_heads"] == 3
    assert len(result["metrics"]["per_head"]) == 3
    assert (out / "attention_masks.png").stat().st_size > 0


def test_unsupervised_cli_rejects_non_voc_datasets(scenes, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["eval", "attention", "--dataset", "ade20k", "--data-root", str(scenes), "--out", str(tmp_path)]
            + ["--backbone", "vit_tiny", "--random-init"]
        )
    rc = exit_info.value.code
    assert rc == 2
    err = capsys.readouterr().err
    assert "argument --dataset: invalid choice: 'ade20k'" in err and "scenes" in err
