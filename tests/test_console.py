"""Console noise: no empty-slice warnings, no CUDA-runtime notice on CPU, warnings on one line."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from neco.evaluation.blocks.matching import matched_miou
from neco.utils.logging import quiet_console


def test_matched_miou_of_nothing_counted_is_nan_without_warning() -> None:
    gt = torch.full((2, 4, 4), 255)  # every pixel ignored: no class has an IoU
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        miou, _, iou = matched_miou(torch.zeros(2, 4, 4, dtype=torch.long), gt, 3, 3, 255)
    assert np_isnan(miou) and all(np_isnan(v) for v in iou)


def np_isnan(value: float) -> bool:
    return value != value


def test_no_cuda_runtime_notice_on_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    if torch.cuda.is_available():
        pytest.skip("the notice is only printed where CUDA is not available")
    quiet_console()
    from torch.utils import cpp_extension  # its import logs the notice too where it is first imported

    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    assert cpp_extension._find_cuda_home() == str(tmp_path)
    assert "No CUDA runtime" not in capsys.readouterr().err


def test_warnings_print_one_line_without_source(capsys: pytest.CaptureFixture) -> None:
    quiet_console()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        quiet_console()  # catch_warnings restores showwarning on exit; install inside it
        warnings.warn("something odd", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "UserWarning: something odd" in err
    assert "warnings.warn(" not in err  # the source line is not echoed
