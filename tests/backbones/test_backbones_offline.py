"""An unreachable hub fails at once (no retries) with the same actionable message."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from neco.backbones.download import download_weights
from neco.backbones.registry import WeightSource


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("kind", ["hub", "url"])
def test_unreachable_hub_fails_at_once(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NECO_CACHE", str(tmp_path / "cache"))
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    if kind == "hub":
        monkeypatch.setenv("HF_ENDPOINT", endpoint)  # a hub mirror: the address neco downloads from
        source = WeightSource("w.pth", hf_repo="someone/model", hf_filename="w.pth")
    else:
        source = WeightSource("w.pth", url=f"{endpoint}/w.pth")
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as err:
        download_weights(source, progress=False)
    assert time.monotonic() - start < 10.0  # the hub client alone retries for ~23 s
    message = str(err.value)
    assert "could not download w.pth" in message
    assert str(tmp_path / "cache") in message
    assert "unreachable" in message
