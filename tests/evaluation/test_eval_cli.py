"""`neco eval hummingbird|linear|overcluster` end to end on tiny synthetic scenes with `vit_tiny`."""

from __future__ import annotations

import json

import pytest
import torch

from neco.backbones import create
from neco.backbones.loading import state_dict_checksum
from neco.cli import main
from neco.data.synthetic import write_scenes
from neco.evaluation import get_protocol
from neco.evaluation.schema import validate_result

COMMON = ["--dataset", "scenes", "--backbone", "vit_tiny", "--random-init", "--input-size", "64"]
COMMON += ["--num-workers", "0", "--no-progress", "--batch-size", "4", "--num-figures", "2", "--threads", "2"]
EXTRA = {
    "hummingbird": ["--memory-size", "4000", "--aug-epochs", "1"],
    "linear": ["--epochs", "2", "--lr-step-epoch", "1", "--target-size", "32", "--probe-batch-size", "4"],
    "overcluster": [
        "--ks",
        "0",
        "20",
        "--num-seeds",
        "2",
        "--niter",
        "10",
        "--nredo",
        "1",
        "--target-size",
        "32",
    ],
}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_scenes(tmp_path_factory.mktemp("scenes") / "s", 8, 4, 64, 0, progress=False)


@pytest.mark.parametrize("protocol", ["hummingbird", "linear", "overcluster"])
def test_eval_cli_end_to_end(scenes, tmp_path, protocol, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "eval",
            protocol,
            "--data-root",
            str(scenes),
            "--out",
            str(out),
            "--seed",
            "3",
            *COMMON,
            *EXTRA[protocol],
        ]
    )
    assert rc == 0
    assert protocol in capsys.readouterr().out
    result = json.loads((out / f"{protocol}.json").read_text())
    torch.manual_seed(3)  # the CLI seeds torch before building a --random-init backbone
    assert result["backbone"]["sha256"] == state_dict_checksum(create("vit_tiny"))
    assert result["backbone"]["name"] == "vit_tiny" and result["backbone"]["patch_size"] == 8
    assert result["settings"]["input_size"] == 64
    assert result["dataset"]["splits"]["val"]["num_images"] == 4
    validate_result(result)
    assert result["schema_version"] == 1 and result["protocol"] == protocol
    for figure in result["figures"]:
        assert (out / figure).stat().st_size > 0
    assert len(result["figures"]) == 2
    metrics = result["metrics"]
    values = [metrics["miou"]] if "miou" in metrics else [v["miou_mean"] for v in metrics.values()]
    assert all(0.0 <= v <= 100.0 for v in values)


def test_eval_cli_reports_bad_options_without_traceback(scenes, tmp_path, capsys):
    rc = main(
        [
            "eval",
            "hummingbird",
            "--data-root",
            str(scenes),
            "--out",
            str(tmp_path),
            *COMMON[:-2],
            "--input-size",
            "60",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "`--input-size` must be a multiple of the patch size 8" in err and "ValueError" not in err
    rc = main(
        [
            "eval",
            "linear",
            "--dataset",
            "scenes",
            "--data-root",
            str(tmp_path / "missing"),
            "--backbone",
            "vit_tiny",
            "--random-init",
        ]
    )
    assert rc == 2


def test_eval_cli_reads_a_neco_checkpoint_as_backbone(scenes, tmp_path):
    torch.manual_seed(0)
    student, teacher = create("vit_tiny"), create("vit_tiny")
    checkpoint = {
        "format": "neco-checkpoint",
        "version": 1,
        "backbone": "vit_tiny",
        "num_register_tokens": 0,
        "student": student.state_dict(),
        "teacher": teacher.state_dict(),
        "student_head": {},
        "teacher_head": {},
    }
    path = tmp_path / "neco.ckpt"
    torch.save(checkpoint, path)
    out = tmp_path / "out"
    args = [
        "eval",
        "overcluster",
        "--data-root",
        str(scenes),
        "--out",
        str(out),
        *COMMON,
        *EXTRA["overcluster"],
    ]
    args[args.index("vit_tiny")] = str(path)
    args.remove("--random-init")
    assert main(args) == 0
    result = json.loads((out / "overcluster.json").read_text())
    assert result["backbone"]["sha256"] == state_dict_checksum(teacher)  # the teacher by default
    assert result["backbone"]["weights"] == str(path.resolve())


def test_default_input_sizes_are_the_published_ones():
    assert get_protocol("hummingbird").default_input_size(14) == 504
    assert get_protocol("hummingbird").default_input_size(16) == 512
    assert get_protocol("linear").default_input_size(14) == 448
    assert get_protocol("overcluster").default_input_size(16) == 448
    assert get_protocol("hummingbird").default_input_size(8) % 8 == 0


def test_default_output_folder_is_per_backbone_and_protocol(scenes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["eval", "overcluster", "--data-root", str(scenes), *COMMON, *EXTRA["overcluster"]]
    assert main(args) == 0
    assert (tmp_path / "eval_out" / "vit_tiny" / "overcluster" / "overcluster.json").is_file()
