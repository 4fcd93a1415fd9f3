"""`neco train`'s weight options: one loading rule with `neco eval` (--backbone NAME|CHECKPOINT, --weights,
--which, --random-init), composed with the dotted overrides and recorded in the run's config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_runs import PRESET, SMALL

from neco.backbones import create
from neco.cli import build_parser, main
from neco.commands.train import build_config
from neco.training.config import config_to_dict
from neco.training.module import NeCoModule
from neco.training.resume import ConfigChangeError, check_config_change


@pytest.fixture(scope="module")
def neco_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    """A neco training checkpoint of `vit_tiny` whose student and teacher differ."""
    torch.manual_seed(0)
    teacher = create("vit_tiny").state_dict()
    student = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in teacher.items()}
    path = tmp_path_factory.mktemp("ckpt") / "run.ckpt"
    torch.save(
        {
            "format": "neco-checkpoint",
            "version": 1,
            "backbone": "vit_tiny",
            "num_register_tokens": 0,
            "teacher": teacher,
            "student": student,
        },
        path,
    )
    return path, teacher, student


def _config(*argv: str, overrides: tuple[str, ...] = ()):
    args = build_parser().parse_args(["train", "--config", str(PRESET), *overrides, *argv])
    return build_config(args)


def test_backbone_name_and_random_init_set_the_model_keys() -> None:
    config = _config("--backbone", "vit_tiny_reg")
    assert config.model.backbone == "vit_tiny_reg" and config.model.pretrained is False  # the preset's
    assert _config(overrides=("model.pretrained=true",)).model.pretrained is True
    config = _config("--backbone", "vit_small", "--random-init", overrides=("model.pretrained=false",))
    assert (config.model.backbone, config.model.pretrained) == ("vit_small", False)
    assert _config().model.weights_which == "teacher"


def test_checkpoint_as_backbone_starts_from_its_recorded_backbone_and_chosen_network(neco_ckpt) -> None:
    path, teacher, student = neco_ckpt
    config = _config("--backbone", str(path), "--which", "student", overrides=tuple(SMALL))
    assert (config.model.backbone, config.model.weights) == ("vit_tiny", str(path))
    assert config_to_dict(config)["model"]["weights_which"] == "student"  # recorded in config.yaml / ckpt
    module = NeCoModule(config)
    for name, network in (("student", module.student), ("teacher", module.teacher)):
        state = network.state_dict()
        assert all(torch.equal(state[k], student[k]) for k in student), name  # both start from it
    default = NeCoModule(_config("--weights", str(path), overrides=tuple(SMALL)))
    assert all(torch.equal(default.student.state_dict()[k], teacher[k]) for k in teacher)


def test_resume_refuses_another_start_network(neco_ckpt) -> None:
    path, _, _ = neco_ckpt
    stored = config_to_dict(_config("--backbone", str(path)))
    with pytest.raises(ConfigChangeError, match=r"model\.weights_which.*'teacher' -> 'student'"):
        check_config_change(stored, _config("--backbone", str(path), "--which", "student"), path)
    old = {**stored, "model": {k: v for k, v in stored["model"].items() if k != "weights_which"}}
    assert check_config_change(old, _config("--backbone", str(path)), path) == {}  # older checkpoints


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (
            ["--backbone", "vit_tiny", "model.backbone=vit_small"],
            ["--backbone vit_tiny", "model.backbone=vit_small"],
        ),
        (
            ["model.backbone=vit_small", "--backbone", "vit_tiny"],
            ["--backbone vit_tiny", "model.backbone=vit_small"],
        ),
        (["--random-init", "model.pretrained=true"], ["--random-init", "model.pretrained=true"]),
        (["--which", "student", "model.weights_which=teacher"], ["--which student", "model.weights_which"]),
        (["--out", "a", "run.out_dir=b"], ["--out a", "run.out_dir=b"]),
    ],
)
def test_an_option_and_an_override_that_disagree_are_refused_naming_both(
    argv: list[str], named: list[str], capsys
) -> None:
    assert main(["train", "--config", str(PRESET), *argv]) == 2
    err = capsys.readouterr().err
    assert all(text in err for text in named), err


def test_contradictory_weight_options_are_refused(neco_ckpt, tmp_path: Path, capsys) -> None:
    path, _, _ = neco_ckpt
    assert main(["train", "--config", str(PRESET), "--backbone", str(path), "--random-init"]) == 2
    assert "--random-init" in capsys.readouterr().err
    assert main(["train", "--config", str(PRESET), "--which", "student"]) == 2
    assert "model.weights_which" in capsys.readouterr().err  # no checkpoint to pick a network from
    missing = tmp_path / "none.pth"
    assert main(["train", "--config", str(PRESET), "--weights", str(missing)]) == 2
    assert f"--weights {missing}" in capsys.readouterr().err
    odd = tmp_path / "runs #1: *x"
    assert _config("--out", str(odd)).run.out_dir == str(odd)  # a path is never read as YAML syntax
    agreeing = _config("--backbone", "vit_tiny", overrides=("model.backbone=vit_tiny",))
    assert agreeing.model.backbone == "vit_tiny"


def test_help_shows_the_weight_options_and_their_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in (
        "--backbone NAME|CHECKPOINT",
        "--weights FILE",
        "--which {teacher,student}",
        "--random-init",
    ):
        assert option in text
    assert "default: teacher" in text and "model.pretrained=false" in text
