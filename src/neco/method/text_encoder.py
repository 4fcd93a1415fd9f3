"""A frozen CLIP text tower through open_clip: named models with cached or given weights, or a config.

`TextEncoder.from_spec(spec)` builds it from a plain dict (stored in text-align checkpoints):
- `{"model": "ViT-B-16", "pretrained": "openai", "weights": None}`: open_clip's published model; the
  weights come from open_clip's cache (the Hugging Face cache, or `~/.cache/clip` for OpenAI files),
  else are downloaded when `download`, else a FileNotFoundError names the file and where to put it;
- `{"model": ..., "weights": FILE}`: that file;
- `{"config": {...}}`: an open_clip `CLIP(**config)` (e.g. a tiny random tower for tests), whose
  state dict the checkpoint carries; with `"init": "words"` its biases, positional embeddings,
  start / end token rows and MLP output projections are zeroed (`words_init`).
Only the text half is kept (the image tower is deleted after loading).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["DEFAULT_TEXT_MODEL", "TextEncoder", "cached_weights", "tiny_text_config", "words_init"]

# Talk2DINO's published mapping uses the OpenAI CLIP ViT-B/16 text encoder.
DEFAULT_TEXT_MODEL = {"model": "ViT-B-16", "pretrained": "openai"}


def tiny_text_config(width: int = 32, context_length: int = 16, layers: int = 1) -> dict[str, Any]:
    """An open_clip CLIP config with a tiny text tower (and a 1-layer 32 px image tower it drops)."""
    return {
        "embed_dim": width,
        "vision_cfg": {"layers": 1, "width": 32, "patch_size": 16, "image_size": 32, "head_width": 16},
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": 49408,  # open_clip's bundled BPE vocabulary
            "width": width,
            "heads": max(1, width // 16),
            "layers": layers,
        },
    }


def cached_weights(model: str, pretrained: str) -> tuple[Path | None, list[str]]:
    """(the cached weights file of open_clip `model`/`pretrained`, or None; the places looked at)."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise ValueError(f"open_clip has no weights {pretrained!r} for {model!r} (its tags: {known})")
    looked: list[str] = []
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in names:
            found = try_to_load_from_cache(repo, name)
            looked.append(f"Hugging Face cache: {repo}/{name}")
            if isinstance(found, str) and Path(found).is_file():
                return Path(found), looked
    url = cfg.get("url", "")
    if url:
        local = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        looked.append(f"{local} (from {url})")
        if local.is_file():
            return local, looked
    return None, looked


@torch.no_grad()
def words_init(model: nn.Module) -> nn.Module:
    """Make a random CLIP text tower a bag-of-words encoder: its pooled embedding then depends on the words only.

    A randomly initialised tower gives similar embeddings to different texts (tests/method pins it:
    mean class-name cosine above 0.4 at width 64), because terms shared by all texts dominate the
    end-of-text token:
    its own embedding and position, every bias, and the MLP's response to any input. Zeroing those
    (biases, positional embeddings, the start / end token rows, the MLP output projections) leaves the
    attention-weighted mix of the word tokens. For tests and the synthetic benchmark only.
    """
    eot, sot = 49407, 49406  # open_clip's SimpleTokenizer end / start of text
    model.token_embedding.weight[[sot, eot]] = 0
    model.positional_embedding.zero_()
    for name, parameter in model.named_parameters():
        if name.startswith("visual."):
            continue
        if name.endswith("bias") or ".mlp.c_proj." in name:
            parameter.zero_()
    return model


class TextEncoder(nn.Module):
    """A frozen open_clip text tower: `encode(texts) -> (len(texts), embed_dim)` float32 embeddings."""

    def __init__(self, clip_model: nn.Module, tokenizer: Any, spec: dict[str, Any]) -> None:
        super().__init__()
        if hasattr(clip_model, "visual"):
            del clip_model.visual  # only the text tower is used; frees the image tower's memory
        self.clip = clip_model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.spec = dict(spec)
        self.embed_dim = int(clip_model.text_projection.shape[-1])

    @classmethod
    def from_spec(
        cls,
        spec: dict[str, Any],
        *,
        state_dict: dict[str, torch.Tensor] | None = None,
        download: bool = True,
    ) -> TextEncoder:
        """Build from a spec (see the module docstring); `state_dict` fills a config-built tower."""
        import open_clip
        from open_clip.tokenizer import SimpleTokenizer

        if spec.get("config") is not None:
            config = spec["config"]
            model = open_clip.CLIP(**config)
            init = spec.get("init")
            if init not in (None, "words"):
                raise ValueError(f"text encoder `init` must be None or 'words' but is {init!r}")
            if init == "words":
                words_init(model)
            if state_dict is not None:
                model.load_state_dict(state_dict, strict=False)  # the image tower is not stored
            tokenizer = SimpleTokenizer(context_length=int(config["text_cfg"]["context_length"]))
            return cls(model, tokenizer, {"config": config, "init": init})
        name = spec.get("model") or DEFAULT_TEXT_MODEL["model"]
        if name not in open_clip.list_models():
            raise ValueError(f"`--text-model` must be an open_clip model name but is {name!r}")
        weights, pretrained = spec.get("weights"), spec.get("pretrained")
        found, looked = None, []
        if weights is not None:
            weights = Path(weights).expanduser()
            if not weights.is_file():
                raise FileNotFoundError(f"--text-weights {weights}: file not found")
            source = str(weights)
        elif pretrained:
            found, looked = cached_weights(name, pretrained)
            source = str(found) if found is not None else pretrained
            if found is None and not download:
                raise FileNotFoundError(_missing_message(name, pretrained, looked))
        else:
            raise ValueError(f"text encoder {name}: give `pretrained` (e.g. 'openai') or a weights file")
        try:
            model = open_clip.create_model(name, pretrained=source, device="cpu")
        except (OSError, RuntimeError) as err:
            if weights is None and found is None:
                raise FileNotFoundError(f"{_missing_message(name, pretrained, looked)} ({err})") from err
            raise
        tokenizer = open_clip.get_tokenizer(name)
        resolved = {
            "model": name,
            "pretrained": pretrained,
            "weights": None if weights is None else str(weights),
        }
        return cls(model, tokenizer, resolved)

    def carries_weights(self) -> bool:
        """Whether a checkpoint must store this tower's weights (a config-built tower has no file)."""
        return self.spec.get("config") is not None

    def text_state_dict(self) -> dict[str, torch.Tensor]:
        """The text tower's tensors (for config-built towers, stored in checkpoints)."""
        return {k: v.detach().cpu().clone() for k, v in self.clip.state_dict().items()}

    def checksum(self) -> str:
        """sha256 over the text tower's tensors (names, shapes, bytes): which encoder embedded a cache."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.clip.state_dict().items()):
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{name}{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Embeddings (len(texts), embed_dim) float32 on the tower's device, in batches of `batch_size`."""
        device = self.clip.text_projection.device
        chunks = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[start : start + batch_size]).to(device)
            chunks.append(self.clip.encode_text(tokens).float())
        if not chunks:
            return torch.empty(0, self.embed_dim, device=device)
        return torch.cat(chunks)


def _missing_message(name: str, pretrained: str, looked: list[str]) -> str:
    places = "; ".join(looked) or "nowhere (no download source known)"
    return (
        f"text encoder {name}/{pretrained}: weights not found offline (looked in: {places}); run once "
        f"with network access (`python -c \"import open_clip; open_clip.create_model('{name}', "
        f"pretrained='{pretrained}')\"` fills that cache), or pass --text-weights FILE "
        "(an open_clip or OpenAI CLIP checkpoint of this model)"
    )
