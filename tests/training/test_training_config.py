"""Typed training config: presets, overrides, validation messages, CLI errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from neco.training.config import (
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    replace_keys,
    save_config,
)

ROOT = Path(__file__).resolve().parents[2]
PRESETS = sorted((ROOT / "configs").rglob("*.yaml"))

# NECO_METHOD.md section 7: backbone, global crop, batch per GPU, epochs, lr_backbone, reference mode.
PUBLISHED = {
    "small/neco_dinov2r": ("dinov2_vits14_reg", 518, 64, 25, 1e-5, "queue"),
    "small/neco_dinov2": ("dinov2_vits14", 518, 64, 25, 1e-5, "queue"),
    "small/neco_dinov2r_xr": ("dinov2_vits14_reg", 518, 64, 25, 1e-5, "queue"),
    "base/neco_dinov2r": ("dinov2_vitb14_reg", 518, 16, 25, 1e-6, "queue"),
    "base/neco_dinov2": ("dinov2_vitb14", 518, 16, 25, 5e-6, "queue"),
    "small/neco_dino": ("dino_vits16", 224, 45, 50, 1e-5, "batch"),
}


def test_every_preset_loads() -> None:
    """Each YAML in configs/ validates; the published ones carry the section-7 numbers."""
    names = {str(p.relative_to(ROOT / "configs").with_suffix("")) for p in PRESETS}
    assert set(PUBLISHED) | {"tiny_cpu"} <= names
    for path in PRESETS:
        config = load_config(path)
        name = str(path.relative_to(ROOT / "configs").with_suffix(""))
        if name in PUBLISHED:
            backbone, size, batch, epochs, lr, mode = PUBLISHED[name]
            assert (config.model.backbone, config.data.crops.global_size, config.data.batch_size) == (
                backbone,
                size,
                batch,
            )
            assert (config.optim.epochs, config.optim.lr_backbone, config.loss.reference_mode) == (
                epochs,
                lr,
                mode,
            )
            assert config.data.crops.local_size == 98 and config.loss.steepness_student == 100.0
            assert config.optim.lr_head == 1e-4 and config.optim.weight_decay_end == 0.5
            assert config.data.kind == "coco" and config.data.root is None
    assert load_config(ROOT / "configs/small/neco_dinov2r_xr.yaml").model.num_register_tokens == 0


def test_overrides_and_roundtrip(tmp_path: Path) -> None:
    """Dotted overrides are parsed as YAML; the saved resolved config loads back equal."""
    config = load_config(
        ROOT / "configs/tiny_cpu.yaml",
        [
            "loss.steepness_student=50",
            "model.trainable_blocks=[2, 3]",
            "data.crops.global_scale=[0.3, 1]",
            "optim.lr_backbone=3e-4",
        ],
    )
    assert config.loss.steepness_student == 50.0
    assert config.model.trainable_blocks == [2, 3]
    assert config.data.crops.global_scale == (0.3, 1.0)
    assert config.optim.lr_backbone == pytest.approx(3e-4)
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config
    assert config_from_dict(config_to_dict(config)) == config
    assert config_from_dict({}) == TrainConfig()


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (
            ["loss.steepnes_student=3"],
            r"unknown config key `loss.steepnes_student`.*did you mean `loss.steepness_student`",
        ),
        (["modle.backbone=x"], r"unknown config key `modle`: valid top-level keys are"),
        (["loss.steepness_student=-1"], r"`loss.steepness_student` must be > 0 but is -1"),
        (["loss.network=quick"], r"`loss.network` must be one of \['bitonic', 'odd_even'\] but is 'quick'"),
        (["data.batch_size=two"], r"`data.batch_size` must be an int but is 'two'"),
        (["data.batch_size=2.5"], r"`data.batch_size` must be an int but is 2.5"),
        (["optim.momentum=1.5"], r"`optim.momentum` must be in \[0.0, 1.0\] but is 1.5"),
        (["data.crops.global_scale=[0.5, 0.2]"], r"`data.crops.global_scale` must be \(low, high\)"),
        (["run.loggers=[tensorboard, neptune]"], r"`run.loggers` must be one of .* but holds 'neptune'"),
        (["run.validation.enabled=true"], r"`run.validation.root` must be a VOC-format folder"),
        (["loss"], r"must have the form `section.key=value`"),
    ],
)
def test_bad_values_name_the_option(overrides: list[str], pattern: str) -> None:
    """Unknown keys, wrong types and out-of-range values raise ValueError naming option and file."""
    with pytest.raises(ValueError, match=pattern) as info:
        load_config(ROOT / "configs/tiny_cpu.yaml", overrides)
    assert "tiny_cpu.yaml" in str(info.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    """A missing config file and a non-mapping YAML get clear errors naming the file."""
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="list.yaml: expected a mapping"):
        load_config(bad)


def test_replace_keys_sets_typed_values_and_names_unknown_keys(tmp_path: Path) -> None:
    """`replace_keys` (the demo's way in) takes typed values, strings literally, and checks them like a file."""
    base = load_config(ROOT / "configs/tiny_cpu.yaml")
    odd = str(tmp_path / "runs #1: *x")
    values = {
        "data.root": odd,
        "model.weights": None,
        "run.devices": 1,
        "data.crops.global_scale": (0.3, 1.0),
    }
    config = replace_keys(base, {**values, "run.progress": False, "optim.lr_backbone": 5e-5})
    assert (config.data.root, config.model.weights, config.run.devices) == (odd, None, 1)
    assert (config.data.crops.global_scale, config.run.progress, config.optim.lr_backbone) == (
        (0.3, 1.0),
        False,
        5e-5,
    )
    assert config.loss == base.loss  # keys not named keep the given config's values
    with pytest.raises(
        ValueError, match=r"unknown config key `optim.lr_bakbone`.*did you mean `optim.lr_backbone`"
    ):
        replace_keys(base, {"optim.lr_bakbone": 1.0})
    with pytest.raises(
        ValueError, match=r"`optim.momentum` must be in \[0.0, 1.0\] but is 2.0 \(config: replace_keys"
    ):
        replace_keys(base, {"optim.momentum": 2.0})


def test_cli_reports_config_errors_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`neco train` with an unknown key exits 2 with a one-line message."""
    from neco.cli import main

    code = main(
        [
            "train",
            "--config",
            str(ROOT / "configs/tiny_cpu.yaml"),
            "optim.lr_bakbone=1",
            "--out",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown config key `optim.lr_bakbone`" in err and "Traceback" not in err
    assert (
        main(["train", "--config", str(ROOT / "configs/tiny_cpu.yaml"), "loss", "--out", str(tmp_path)]) == 2
    )
    assert "override 'loss' must have the form `section.key=value`" in capsys.readouterr().err
    assert (
        main(["train", "--config", "tiny_cpu", "--loss.steepness_student", "-1", "--out", str(tmp_path)]) == 2
    )
    assert "`loss.steepness_student` must be > 0 but is -1.0 (config: " in capsys.readouterr().err


def test_cli_missing_data_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A published preset without `data.root`, or with a missing / empty folder, fails clearly."""
    from neco.cli import main

    preset = str(ROOT / "configs/small/neco_dino.yaml")
    common = [
        "model.pretrained=false",
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
        "--accelerator",
        "cpu",
    ]
    assert main(["train", "--config", preset, *common]) == 2
    assert "`data.root` must be set" in capsys.readouterr().err
    assert main(["train", "--config", preset, f"data.root={tmp_path / 'missing'}", *common]) == 2
    assert "`data.root` (data.kind=coco)" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert (
        main(["train", "--config", preset, f"data.root={tmp_path / 'empty'}", "data.kind=folder", *common])
        == 2
    )
    assert "found no image files" in capsys.readouterr().err


def test_train_accepts_overrides_after_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from neco.cli import main

    preset = str(ROOT / "configs/small/neco_dino.yaml")
    missing = tmp_path / "missing"
    options = ["--out", str(tmp_path / "run"), "--no-progress"]
    # overrides before and after the options: both reach the config (the data.root error proves it)
    assert (
        main(["train", "--config", preset, "model.pretrained=false", *options, f"data.root={missing}"]) == 2
    )
    assert "`data.root` (data.kind=coco)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--config", preset, *options, "--no-such-option"])
    err = capsys.readouterr().err
    assert "usage: neco train" in err and "unrecognized arguments: --no-such-option" in err
