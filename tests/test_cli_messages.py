"""Every option or config key that an error message suggests exists (parsed from the messages)."""

from __future__ import annotations

import argparse
import dataclasses
import re
import warnings
from pathlib import Path

import pytest

from neco.cli import build_parser, main
from neco.training.config import TrainConfig, config_from_dict, config_to_dict

OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*(?:\.[a-z_]+)*)")
KEY = re.compile(r"`([a-z_]+(?:\.[a-z_]+)+)(?:=[^`]*)?`")


def _options(parser: argparse.ArgumentParser) -> set[str]:
    found = set()
    for action in parser._actions:
        found.update(s for s in action.option_strings if s.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _options(sub)
    return found


def _keys(values: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in values.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= _keys(value, f"{prefix}{key}.")
    return keys


ALL_OPTIONS = _options(build_parser())
TRAIN_KEYS = _keys(config_to_dict(TrainConfig()))


def _check(message: str, expect_some: bool = True) -> None:
    options, keys = OPTION.findall(message), KEY.findall(message)
    assert not expect_some or options or keys, f"no suggestion parsed from: {message}"
    assert set(options) <= ALL_OPTIONS, (sorted(set(options) - ALL_OPTIONS), message)
    assert set(keys) <= TRAIN_KEYS, (sorted(set(keys) - TRAIN_KEYS), message)


def test_the_parser_of_suggestions_catches_wrong_names() -> None:
    with pytest.raises(AssertionError):
        _check("pass the file as `weights=<path>` or `data.max_bad_fraction=0.1`")
    with pytest.raises(AssertionError):
        _check("use --no-such-option")


def test_offline_download_message(tmp_path: Path, monkeypatch) -> None:
    from neco.backbones import download, get_config

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setenv("NECO_CACHE", str(tmp_path))
    monkeypatch.setattr(download, "_fetch", offline)
    source = download.weight_source(get_config("dinov2_vits14_reg"), "official")
    with pytest.raises(FileNotFoundError) as err:
        download.download_weights(source, progress=False)
    message = str(err.value)
    _check(message)
    assert "--weights" in message and "`model.weights=FILE`" in message


def test_unreadable_training_images_name_the_config_key(tmp_path: Path) -> None:
    from neco.data.images import UnreadableImagesError
    from neco.training.datamodule import build_training_source

    for i in range(8):
        (tmp_path / f"bad{i}.jpg").write_bytes(b"broken")
    config = config_from_dict({"data": {"kind": "folder", "root": str(tmp_path), "max_bad_images": 0.0}})
    source = build_training_source(config)
    with warnings.catch_warnings(), pytest.raises(UnreadableImagesError) as err:
        warnings.simplefilter("ignore")
        for index in range(len(source)):
            source.load(index)
    message = str(err.value)
    _check(message)
    assert "data.max_bad_images" in message and "max_bad_fraction" not in message


def test_unknown_backbone_names_the_option_and_the_closest_name(tmp_path: Path, capsys) -> None:
    from neco.backbones import get_config

    with pytest.raises(ValueError) as err:
        get_config("dinov2_vits14_regg")
    message = str(err.value)
    _check(message)
    assert "`model.backbone`" in message and "did you mean 'dinov2_vits14_reg'" in message
    assert (
        main(["features", str(tmp_path), "--backbone", "dinov2_vits14_regg", "-o", str(tmp_path / "f")]) == 2
    )
    assert "did you mean 'dinov2_vits14_reg'" in capsys.readouterr().err


def test_cli_error_messages_suggest_existing_options(tmp_path: Path, capsys) -> None:
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (16, 16)).save(image)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    (tmp_path / "exists.pt").write_bytes(b"x")
    runs = [
        [
            "features",
            str(image),
            "--backbone",
            "vit_tiny",
            "-o",
            str(tmp_path / "f.pt"),
        ],  # no pretrained weights
        [
            "features",
            str(image),
            "--backbone",
            "vit_tiny",
            "--random-init",
            "-o",
            str(tmp_path / "exists.pt"),
        ],
        ["features", str(bad), "--backbone", "vit_tiny", "--random-init", "-o", str(tmp_path / "g.pt")],
    ]
    for args in runs:
        assert main(args) == 2, args
        _check(capsys.readouterr().err)


def test_every_train_config_key_named_in_the_config_module_exists() -> None:
    import inspect

    from neco.training import config

    for key in set(KEY.findall(inspect.getsource(config))):
        if key.split(".")[0] in {f.name for f in dataclasses.fields(TrainConfig)}:
            assert key in TRAIN_KEYS, key


def test_every_option_named_in_the_source_exists() -> None:
    import ast

    missing = set()
    for path in (Path(__file__).resolve().parents[1] / "src" / "neco").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                missing |= {(path.name, o) for o in OPTION.findall(node.value) if o not in ALL_OPTIONS}
    assert not missing, sorted(missing)
