"""The YAML presets ship inside the wheel and an installed neco reads them from there (not the checkout)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from neco.training.presets import list_presets, preset_path, presets_root

ROOT = Path(__file__).resolve().parents[2]


def test_presets_resolve_by_name_with_suggestions() -> None:
    names = list_presets()
    on_disk = sorted(
        p.relative_to(ROOT / "configs").with_suffix("").as_posix() for p in (ROOT / "configs").rglob("*.yaml")
    )
    assert names == on_disk and "tiny_cpu" in names
    assert preset_path("tiny_cpu") == presets_root() / "tiny_cpu.yaml"
    assert preset_path("tiny_cpu.yaml") == preset_path("tiny_cpu")
    with pytest.raises(FileNotFoundError, match="did you mean 'tiny_cpu'"):
        preset_path("tiny_cup")


@pytest.mark.slow
def test_wheel_carries_the_presets_and_the_demo_reads_them(tmp_path: Path) -> None:
    """Build the wheel from a copy of the checkout, then import neco from the unpacked wheel with the
    checkout out of reach: the demo's preset comes from the installed package and equals configs/tiny_cpu.yaml."""
    source = tmp_path / "checkout"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "configs", source / "configs")
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=source, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = tmp_path.glob("neco-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packed = {n[len("neco/configs/") :] for n in archive.namelist() if n.startswith("neco/configs/")}
        expected = {p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml")}
        assert expected and expected <= packed
        # every module and data file of the package: a folder without __init__.py once fell out
        shipped = {
            p.relative_to(ROOT / "src").as_posix()
            for p in (ROOT / "src" / "neco").rglob("*")
            if p.is_file()
            and "__pycache__" not in p.parts
            and "configs" not in p.relative_to(ROOT / "src").parts
        }
        left_out = sorted(shipped - set(archive.namelist()))
        assert not left_out, f"files of src/neco missing from the wheel: {left_out}"
        site = tmp_path / "site"
        archive.extractall(site)
    shutil.rmtree(source)  # the checkout the wheel came from is gone
    probe = (
        "import neco, json\n"
        "from neco.demo.run import DemoConfig, _tiny_preset, train_config\n"
        "from pathlib import Path\n"
        "cfg = train_config(DemoConfig.quick(), Path('scenes'), Path('run'), 3, None)\n"
        "print(json.dumps({'neco': neco.__file__, 'preset': str(_tiny_preset()), 'roi': cfg.loss.roi_size,"
        " 'queue': cfg.loss.queue_size, 'head': cfg.model.head_out_dim}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["neco"].startswith(str(site)) and found["preset"] == str(
        site / "neco" / "configs" / "tiny_cpu.yaml"
    )
    from neco.training.config import load_config

    tiny = load_config(ROOT / "configs" / "tiny_cpu.yaml")
    assert (found["roi"], found["queue"], found["head"]) == (tiny.loss.roi_size, tiny.loss.queue_size, 64)


def test_train_accepts_a_preset_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`neco train --config small/neco_dino` reads the installed preset (it then fails on its data root)."""
    from neco.cli import main

    common = [
        "model.pretrained=false",
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
        "--accelerator",
        "cpu",
    ]
    assert main(["train", "--config", "small/neco_dino", *common]) == 2
    assert "`data.root` must be set to the coco image folder" in capsys.readouterr().err
    assert main(["train", "--config", "small/no_such", *common]) == 2
    assert "no such config file" in capsys.readouterr().err


def test_every_preset_resolves_to_the_values_of_the_settings_before_jsonargparse() -> None:
    """Each preset (and the defaults) gives the values the hand-written loader gave on main: the fixture
    was dumped with it before the settings moved to jsonargparse. Keys added since hold their defaults."""
    import json

    from neco.training.config import config_keys, config_to_dict, load_config

    def flat(values: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in values.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
        return out

    before = json.loads((Path(__file__).parent / "fixtures" / "presets_resolved_main.json").read_text())
    assert set(before) == {*list_presets(), "(defaults)"}
    added = {"run.attention_validation." + k for k in ("enabled", "root", "dataset", "split", "every_steps",
             "max_images", "input_size", "mass", "sigma", "min_component", "batch_size")}  # fmt: skip
    for name, values in before.items():
        now = flat(config_to_dict(load_config(None if name == "(defaults)" else preset_path(name))))
        assert {k: now[k] for k in flat(values)} == flat(values), name
        assert set(now) - set(flat(values)) == added, name
        assert all(now[k] == config_keys()[k][0] for k in added), name
