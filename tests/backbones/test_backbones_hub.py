"""hubconf.py: torch.hub entry points for every registered backbone, importable without installing neco."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import torch

from neco.backbones import list_backbones

REPO = Path(__file__).resolve().parents[2]


def test_torch_hub_load_local_tiny() -> None:
    torch.manual_seed(0)
    model = torch.hub.load(str(REPO), "vit_tiny", source="local", pretrained=False)
    assert model.config.name == "vit_tiny"
    with torch.no_grad():
        assert model(torch.randn(1, 3, 16, 16)).shape == (1, 192)


def test_every_registered_name_is_an_entry_point() -> None:
    spec = importlib.util.spec_from_file_location("neco_hubconf", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert {"torch", "timm"} <= set(hubconf.dependencies)
    for name in list_backbones():
        assert callable(getattr(hubconf, name)), name
    assert "neco_vits14_reg" in dir(hubconf)
    model = hubconf.vit_tiny_reg(pretrained=False, drop_path_rate=0.1)
    assert model.num_register_tokens == 4


def test_hubconf_works_without_neco_installed(tmp_path) -> None:
    # A fresh interpreter with the installed (editable) neco hidden: hubconf must put
    # the repository's own src/ first.
    code = (
        "import sys; sys.path[:] = [p for p in sys.path if not p.rstrip('/').endswith('/src')]\n"
        # an editable install may also find neco through a meta-path finder (setuptools' __editable__ hook)
        "sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, '__module__', '').startswith('__editable__')]\n"
        "import importlib.util\n"
        "assert importlib.util.find_spec('neco') is None, 'neco still importable'\n"
        "import torch\n"
        f"m = torch.hub.load({str(REPO)!r}, 'vit_tiny', source='local', pretrained=False)\n"
        "import neco\n"
        f"assert neco.__file__.startswith({str(REPO / 'src')!r}), neco.__file__\n"
        "print(type(m).__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("Backbone")


def _hubconf():
    spec = importlib.util.spec_from_file_location("neco_hubconf", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    return hubconf


def test_hubconf_exposes_only_model_entry_points() -> None:
    # torch.hub.list's rule: every public callable of hubconf is an entry point
    public = {
        name for name in dir(_hubconf()) if callable(getattr(_hubconf(), name)) and not name.startswith("_")
    }
    assert public == set(list_backbones()) | {"timm_vit"}


def test_hubconf_declares_every_package_the_backbones_import() -> None:
    import ast

    # the neco modules a hub load imports, from a fresh interpreter
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import hubconf; hubconf.vit_tiny(pretrained=False)\n"
        "print('\\n'.join(m.__file__ for n, m in list(sys.modules.items()) "
        "if n.split('.')[0] == 'neco' and getattr(m, '__file__', None)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-2000:]
    imported = set()
    for path in result.stdout.split():
        for node in ast.walk(ast.parse(Path(path).read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"neco"}
    assert third_party, "no import found: the scan is broken"
    assert third_party <= set(_hubconf().dependencies), sorted(third_party - set(_hubconf().dependencies))
