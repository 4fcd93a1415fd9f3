"""Checksums of the tensors in a (nested) checkpoint: finite garbage written into a file is detected."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["named_tensors", "tensor_checksum", "CHECKSUM_KEY"]

# The key under which a checkpoint stores the checksum of all its other tensors.
CHECKSUM_KEY = "tensor_checksum"


def named_tensors(value: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor inside nested dicts / lists / tuples, with a dotted name (`a.b[2].c`)."""
    if torch.is_tensor(value):
        yield prefix, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from named_tensors(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from named_tensors(item, f"{prefix}[{index}]")


def tensor_checksum(value: Any) -> str:
    """BLAKE2b (128 bit, hex) of every tensor's name, dtype, shape and bytes inside `value`.

    Tensors sharing memory (a checkpoint stores its backbones twice, once in Lightning's state dict) are
    hashed once and referenced by name afterwards; `torch.load` restores the sharing, so the checksum of
    a loaded file equals the one computed before saving it.
    """
    digest = hashlib.blake2b(digest_size=16)
    first: dict[tuple[Any, ...], str] = {}
    for name, tensor in sorted(named_tensors(value), key=lambda item: item[0]):
        tensor = tensor.detach()
        view = (tensor.device.type, tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.numel() and view in first:
            digest.update(f"same-as:{first[view]}".encode())
            continue
        first[view] = name
        data = tensor.cpu().contiguous().reshape(-1).view(torch.uint8)
        digest.update(data.numpy())  # a buffer: no copy
    return digest.hexdigest()
