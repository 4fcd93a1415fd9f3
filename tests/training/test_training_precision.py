"""The bf16 training step: backbone under bf16 autocast, loss in fp32; finite and close to the fp32 step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_runs import SMALL

from neco.training.config import load_config
from neco.training.datamodule import TrainImages, build_crop_sampler, collate_with_position
from neco.training.module import NeCoModule

ROOT = Path(__file__).resolve().parents[2]
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        ],
    ),
]


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory):
    """A fixed batch of 3 multi-crop samples of generated scenes."""
    from neco.data import build_image_source
    from neco.data.synthetic import write_scenes

    config = load_config(ROOT / "configs/tiny_cpu.yaml", SMALL)
    root = write_scenes(tmp_path_factory.mktemp("scenes"), num_train=4, num_val=1, size=48, progress=False)
    dataset = TrainImages(
        build_image_source("voc", root, split="train"), build_crop_sampler(config.data), seed=0
    )
    return collate_with_position([dataset[(0, i, i)] for i in range(3)])


def _step(device: str, batch: dict, bf16: bool) -> tuple[float, torch.Tensor, list[torch.dtype]]:
    """Loss, the student's first-layer gradient and the dtypes reaching the sorter, for one step."""
    torch.manual_seed(0)
    config = load_config(ROOT / "configs/tiny_cpu.yaml", SMALL)
    module = NeCoModule(config).to(device)
    module.train()
    seen: list[torch.dtype] = []
    module.loss_fn.student_sorter.register_forward_pre_hook(lambda _, args: seen.append(args[0].dtype))
    moved = {
        k: ([t.to(device) for t in v] if isinstance(v, list) else v.to(device)) for k, v in batch.items()
    }
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        loss = module.compute_loss(moved)[0]
    loss.backward()
    grad = module.student.model.patch_embed.proj.weight.grad.detach().float().cpu()
    return float(loss), grad, seen


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_step_is_finite_and_close_to_fp32(device: str, batch: dict) -> None:
    loss32, grad32, _ = _step(device, batch, bf16=False)
    loss16, grad16, sorter_dtypes = _step(device, batch, bf16=True)
    assert sorter_dtypes and all(dtype == torch.float32 for dtype in sorter_dtypes)  # the loss stays fp32
    assert torch.isfinite(torch.tensor(loss16)) and torch.isfinite(grad16).all()
    # bf16 keeps 8 bits of mantissa in the backbone: the loss moves by far less than its value.
    assert abs(loss16 - loss32) <= 0.02 * abs(loss32) + 1e-3
    cosine = torch.nn.functional.cosine_similarity(grad16.flatten(), grad32.flatten(), dim=0)
    assert cosine > 0.9


def test_run_compile_compiles_both_backbones_once(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[torch.nn.Module] = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *args, **kwargs: compiled.append(self))
    module = NeCoModule(load_config(ROOT / "configs/tiny_cpu.yaml", [*SMALL, "run.compile=true"]))
    module.configure_model()
    module.configure_model()  # Lightning may call it again (e.g. after a restore): compile only once
    assert compiled == [module.student, module.teacher]
    plain = NeCoModule(load_config(ROOT / "configs/tiny_cpu.yaml", SMALL))
    plain.configure_model()
    assert len(compiled) == 2
