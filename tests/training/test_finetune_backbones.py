"""Every backbone family fine-tunes: the Segmenter model builds on it, groups its layers, and one SGD step trains it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neco.backbones import create
from neco.evaluation.blocks.segmenter import DECODERS, SegmenterModel, build_decoder, set_drop_path
from neco.evaluation.protocols.finetune import FinetuneSettings
from neco.training.finetune import parameter_groups

# one tiny random-init model per family neco has (the registry's kwargs shrink the published shapes)
FAMILIES = {
    "dinov2": ("dinov2_vits14", {"depth": 2, "embed_dim": 64, "num_heads": 2}),
    "dinov2_reg": ("dinov2_vits14_reg", {"depth": 2, "embed_dim": 64, "num_heads": 2}),
    "dino": ("dino_vits16", {"depth": 2, "embed_dim": 64, "num_heads": 2}),
    "dinov3": ("dinov3_vits16", {"depth": 2, "embed_dim": 64, "num_heads": 2}),
    "timm": ("timm:test_vit,depth=2", {}),
}
NUM_CLASSES = 3


@pytest.mark.parametrize("decoder", sorted(DECODERS))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_one_training_step_on_every_backbone_family(family: str, decoder: str) -> None:
    name, kwargs = FAMILIES[family]
    torch.manual_seed(0)
    backbone = create(name, pretrained=False, **kwargs).train()
    depth = len(backbone.blocks)
    assert depth == 2 and set_drop_path(backbone, 0.1) == depth  # every block has its stochastic-depth slot
    model = SegmenterModel(backbone, build_decoder(decoder, backbone.embed_dim, NUM_CLASSES, num_layers=1))
    settings = FinetuneSettings(decoder=decoder, layer_decay=0.5, drop_path=0.1)
    groups = parameter_groups(model, settings)
    # layer-wise decay reads this family's parameter names: embeddings 0.5^3, block i 0.5^(2 - i), the rest 1
    scale_of = {id(p): group["lr_scale"] for group in groups for p in group["params"]}
    for param_name, param in backbone.named_parameters():
        if param_name.startswith("model.blocks."):
            expected = 0.5 ** (depth - int(param_name.split(".")[2]))
        elif param_name.split(".")[1] in ("patch_embed", "cls_token", "pos_embed", "reg_token"):
            expected = 0.5 ** (depth + 1)
        else:  # a name the grouping does not know would land here silently: only the final norm may
            assert param_name.startswith("model.norm."), (family, param_name)
            expected = 1.0
        assert scale_of[id(param)] == expected, (family, param_name)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum)
    size = 2 * backbone.patch_size
    images = torch.randn(2, 3, size, size)
    labels = torch.randint(0, NUM_CLASSES, (2, size, size))
    labels[:, 0, 0] = 255  # the ignore index stays out of the loss
    logits = model(images)
    assert logits.shape == (2, NUM_CLASSES, size, size)
    loss = F.cross_entropy(logits, labels, ignore_index=255)
    loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), (family, param_name)
    optimizer.step()
    assert torch.isfinite(loss)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert any(n.startswith("backbone.model.blocks.0.") for n in changed), family
    assert any(n.startswith("decoder.") for n in changed), family
