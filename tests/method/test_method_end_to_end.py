"""One NeCo step on a tiny ViT from plain torch: crops -> backbone -> head -> loss -> AdamW -> EMA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from neco.method import (
    MultiCropSampler,
    NeCoLoss,
    ProjectionHead,
    attention_foreground,
    build_param_groups,
    collate_multicrop,
    ema_update_,
    make_teacher,
)
from neco.method.head import tokens_to_grid

backbones = pytest.importorskip("neco.backbones")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _grids(backbone, head, views, patch):
    grids = []
    for view in views:
        tokens = backbone.forward_features(view)["x_norm_patchtokens"]  # (B, h*w, D)
        grids.append(tokens_to_grid(head(tokens), view.shape[-2] // patch, view.shape[-1] // patch))
    return grids


@pytest.mark.parametrize("reference_mode,masks", [("batch", False), ("queue", True)])
def test_one_training_step(reference_mode: str, masks: bool) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for _ in range(2)]
    sampler = MultiCropSampler(global_size=(32, 40), local_size=16, num_global=2, num_local=2)
    batch = collate_multicrop(
        [sampler(image, rng=torch.Generator().manual_seed(i)) for i, image in enumerate(images)]
    )

    student = backbones.create("vit_tiny_reg", drop_path_rate=0.1)
    student_head = ProjectionHead(student.embed_dim, hidden_dim=64, out_dim=32)
    teacher, teacher_head = make_teacher(student), make_teacher(student_head)
    patch = student.patch_size
    criterion = NeCoLoss(roi_size=3, reference_mode=reference_mode, queue_size=64)

    with torch.no_grad():
        teacher_grids = _grids(teacher, teacher_head, batch["views"][:2], patch)
        teacher_masks = None
        if masks:
            teacher_masks = [
                attention_foreground(
                    teacher.get_last_self_attention(v),
                    teacher.num_register_tokens,
                    (v.shape[-2] // patch, v.shape[-1] // patch),
                )
                for v in batch["views"][:2]
            ]
    student_grids = _grids(student, student_head, batch["views"], patch)
    out = criterion(
        student_grids, teacher_grids, batch["boxes"], batch["valid"], patch, teacher_masks=teacher_masks
    )
    assert torch.isfinite(out.loss) and out.loss > 0
    out.loss.backward()

    for name, param in [*student.named_parameters(), *student_head.named_parameters()]:
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert all(p.grad is None for p in [*teacher.parameters(), *teacher_head.parameters()])

    groups = build_param_groups(student, student_head, lr_backbone=1e-3, lr_head=1e-3, weight_decay=0.04)
    optimizer = torch.optim.AdamW(groups)
    before = {n: p.clone() for n, p in teacher.named_parameters()}
    optimizer.step()
    ema_update_(teacher, student, 0.9)
    changed = [n for n, p in teacher.named_parameters() if not torch.equal(p, before[n])]
    assert "model.blocks.0.attn.qkv.weight" in changed
