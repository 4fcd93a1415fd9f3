"""Reference pieces of the official DINOv2 code the tests compare neco against (it is not installed)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from neco.backbones import convert, create, get_config


def official_state_dict(name: str, **overrides) -> dict[str, torch.Tensor]:
    """A neco model's weights in the official DINOv2 / DINO names, with a mask token where DINOv2 has one."""
    model = create(name, **overrides)
    state = convert(model.state_dict(), to="official")
    if get_config(name).mask_token:
        state["mask_token"] = torch.zeros(1, model.embed_dim)
    return state


def interpolate_pos_encoding(
    pos_embed: torch.Tensor, height: int, width: int, patch: int, offset: float, antialias: bool
) -> torch.Tensor:
    """The official `DinoVisionTransformer.interpolate_pos_encoding` on a (1, 1 + M*M, D) table."""
    npatch, n = (height // patch) * (width // patch), pos_embed.shape[1] - 1
    if npatch == n and width == height:
        return pos_embed
    side = int(math.sqrt(n))
    w0, h0 = width // patch, height // patch
    kwargs = {"scale_factor": ((h0 + offset) / side, (w0 + offset) / side)} if offset else {"size": (h0, w0)}
    patch_pos = F.interpolate(
        pos_embed[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2),
        mode="bicubic",
        antialias=antialias,
        **kwargs,
    )
    patch_pos = patch_pos.permute(0, 2, 3, 1).view(1, -1, pos_embed.shape[-1])
    return torch.cat([pos_embed[:, :1], patch_pos], dim=1).to(pos_embed.dtype)


def official_patch_tokens(
    state: dict[str, torch.Tensor], x: torch.Tensor, *, patch: int, heads: int, offset: float, antialias: bool
) -> torch.Tensor:
    """Final-norm patch tokens (B, h*w, D) of the official DINOv2 forward, from official weights (MLP blocks)."""
    dim = state["cls_token"].shape[-1]
    tokens = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=patch)
    tokens = torch.cat(
        [state["cls_token"].expand(x.shape[0], -1, -1), tokens.flatten(2).transpose(1, 2)], dim=1
    )
    tokens = tokens + interpolate_pos_encoding(
        state["pos_embed"], x.shape[2], x.shape[3], patch, offset, antialias
    )
    registers = state.get("register_tokens")
    if registers is not None:
        tokens = torch.cat([tokens[:, :1], registers.expand(x.shape[0], -1, -1), tokens[:, 1:]], dim=1)
    batch, count = tokens.shape[:2]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for i in range(depth):
        w = {k[len(f"blocks.{i}.") :]: v for k, v in state.items() if k.startswith(f"blocks.{i}.")}
        h = F.layer_norm(tokens, (dim,), w["norm1.weight"], w["norm1.bias"], eps=1e-6)
        q, k, v = (
            F.linear(h, w["attn.qkv.weight"], w["attn.qkv.bias"])
            .reshape(batch, count, 3, heads, -1)
            .permute(2, 0, 3, 1, 4)
        )
        attn = ((q * (dim // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(
            -1
        ) @ v  # (B, heads, T, D / heads)
        attn = F.linear(
            attn.transpose(1, 2).reshape(batch, count, dim), w["attn.proj.weight"], w["attn.proj.bias"]
        )
        tokens = tokens + w.get("ls1.gamma", 1.0) * attn
        h = F.layer_norm(tokens, (dim,), w["norm2.weight"], w["norm2.bias"], eps=1e-6)
        mlp = F.linear(
            F.gelu(F.linear(h, w["mlp.fc1.weight"], w["mlp.fc1.bias"])),
            w["mlp.fc2.weight"],
            w["mlp.fc2.bias"],
        )
        tokens = tokens + w.get("ls2.gamma", 1.0) * mlp
    tokens = F.layer_norm(tokens, (dim,), state["norm.weight"], state["norm.bias"], eps=1e-6)
    return tokens[:, 1 + (0 if registers is None else registers.shape[1]) :]
