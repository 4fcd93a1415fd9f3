"""Issue 26 on the evaluation side: result folders named after the run, never another backbone's result
overwritten, the output folder checked before any feature, a random low-data subset announced."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from toy import oracle_features, run_protocol, write_toy_dataset

from neco.backbones import create
from neco.cli import main
from neco.data.synthetic import write_scenes
from neco.evaluation.protocols.hummingbird import HummingbirdSettings

COMMON = ["--dataset", "scenes", "--input-size", "64", "--num-workers", "0", "--no-progress"]
COMMON += ["--batch-size", "4", "--num-figures", "0", "--threads", "2"]
OVERCLUSTER = ["--ks", "4", "--num-seeds", "1", "--niter", "5", "--nredo", "1", "--target-size", "32"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_scenes(tmp_path_factory.mktemp("scenes") / "s", 4, 2, 64, 0, progress=False)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return write_toy_dataset(root, "train", 8, seed=0), write_toy_dataset(root, "val", 4, seed=1)


def _run_checkpoint(run: Path, seed: int) -> Path:
    """A neco checkpoint at <run>/checkpoints/step_00000002.ckpt with `last.ckpt` linking to it."""
    torch.manual_seed(seed)
    model = create("vit_tiny")
    state = model.state_dict()
    checkpoint = {"format": "neco-checkpoint", "version": 1, "backbone": "vit_tiny", "num_register_tokens": 0}
    checkpoint.update(student=state, teacher=state, student_head={}, teacher_head={})
    folder = run / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(checkpoint, folder / "step_00000002.ckpt")
    os.symlink("step_00000002.ckpt", folder / "last.ckpt")
    return folder / "last.ckpt"


def _eval(scenes: Path, backbone: str, *extra: str) -> int:
    return main(
        [
            "eval",
            "overcluster",
            "--data-root",
            str(scenes),
            "--backbone",
            backbone,
            *COMMON,
            *OVERCLUSTER,
            *extra,
        ]
    )


# -- 4. default result folders ---------------------------------------------------------------------


def test_two_runs_last_ckpt_get_their_own_result_folders(scenes, tmp_path, monkeypatch, capfd) -> None:
    monkeypatch.chdir(tmp_path)
    first, second = _run_checkpoint(tmp_path / "runA", 0), _run_checkpoint(tmp_path / "runB", 1)
    assert _eval(scenes, str(first)) == 0 and _eval(scenes, str(second)) == 0
    err = capfd.readouterr().err
    assert "on scenes val (2)" in err and "val val" not in err  # 19. the split named once
    a = json.loads((tmp_path / "eval_out/runA_step_00000002/overcluster/overcluster.json").read_text())
    b = json.loads((tmp_path / "eval_out/runB_step_00000002/overcluster/overcluster.json").read_text())
    assert a["backbone"]["sha256"] != b["backbone"]["sha256"]
    assert not (tmp_path / "eval_out" / "last").exists()


def test_another_backbones_result_is_never_overwritten(scenes, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    first, second = _run_checkpoint(tmp_path / "a" / "x", 0), _run_checkpoint(tmp_path / "b" / "x", 1)
    assert _eval(scenes, str(first)) == 0 and _eval(scenes, str(second)) == 0  # both named x_step_00000002
    kept = json.loads((tmp_path / "eval_out/x_step_00000002/overcluster/overcluster.json").read_text())
    other = json.loads((tmp_path / "eval_out/x_step_00000002_2/overcluster/overcluster.json").read_text())
    assert kept["backbone"]["weights"].startswith(str(tmp_path / "a")) and other["backbone"][
        "weights"
    ].startswith(str(tmp_path / "b"))
    assert _eval(scenes, str(first)) == 0  # a rerun of the same backbone replaces its own result
    assert not (tmp_path / "eval_out/x_step_00000002_3").exists()
    out = tmp_path / "eval_out/x_step_00000002/overcluster"
    before = (out / "overcluster.json").read_bytes()
    capsys.readouterr()
    assert _eval(scenes, str(second), "--out", str(out)) == 2
    assert "overcluster.json holds the result of another backbone" in capsys.readouterr().err
    assert (out / "overcluster.json").read_bytes() == before


# -- 9. output folder checked first ----------------------------------------------------------------


def test_an_unusable_out_fails_before_any_feature_and_orphans_are_removed(toy, tmp_path) -> None:
    train, val = toy
    calls = []

    def features(images):
        calls.append(images.shape[0])
        return oracle_features(images, 2, 4)

    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(PermissionError, match=r"--out .*file/out: cannot create the directory"):
        run_protocol("overcluster", features, 2, val, out_dir=blocked / "out", input_size=32)
    assert calls == []
    out = tmp_path / "out"
    out.mkdir()
    orphan = out / ".overcluster_pca.png.abc123.tmp"
    orphan.write_bytes(b"half a figure")
    run_protocol("overcluster", features, 2, val, out_dir=out, input_size=32)
    assert not orphan.exists() and (out / "overcluster.json").is_file()


# -- 7. a random low-data subset is announced -------------------------------------------------------


def test_a_random_subset_in_place_of_a_published_list_is_a_warning(toy) -> None:
    train, val = toy

    def run(**settings):
        settings = HummingbirdSettings(memory_size=8 * 256, fraction="1/2", search="faiss", **settings)
        return run_protocol(
            "hummingbird",
            lambda x: oracle_features(x, 2, 4),
            2,
            val,
            train,
            settings,
            input_size=32,
            batch_size=4,
        )

    (warning,) = run().result["warnings"]
    assert "--fraction 1/2 --split-seed 42: no published list for toy train" in warning
    assert "a different benchmark" in warning
    assert run(subset="random").result["warnings"] == []  # asked for


def test_non_finite_evaluation_options_are_refused(scenes, capsys) -> None:
    args = [
        "eval",
        "hummingbird",
        "--data-root",
        str(scenes),
        "--backbone",
        "vit_tiny",
        "--random-init",
        *COMMON,
    ]
    assert main([*args, "--temperature", "nan"]) == 2
    assert "`--temperature` must be a finite number but is nan" in capsys.readouterr().err


# -- 19. wording -----------------------------------------------------------------------------------


def test_a_list_option_out_of_range_names_the_item(scenes, capsys) -> None:
    args = [
        "eval",
        "overcluster",
        "--data-root",
        str(scenes),
        "--backbone",
        "vit_tiny",
        "--random-init",
        *COMMON,
    ]
    assert main([*args, "--ks", "4", "-5"]) == 2
    err = capsys.readouterr().err
    assert "`--ks` must be >= 0 but holds -5" in err and "(4, -5)" not in err


def test_make_scenes_says_when_it_reused_the_output(tmp_path, capsys) -> None:
    args = [
        "make-scenes",
        str(tmp_path / "s"),
        "--num-train",
        "2",
        "--num-val",
        "1",
        "--input-size",
        "32",
        "--no-progress",
    ]
    assert main(args) == 0
    assert "scenes: wrote 2 train" in capsys.readouterr().out
    assert main(args) == 0
    assert "scenes: reused the existing 2 train" in capsys.readouterr().out
    assert main([*args[:-1], "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert (
        "`neco make-scenes DIR --overwrite` (`overwrite=True` from Python)" in err
        and "} (overwrite=True)" not in err
    )
