"""Zero-shot open-vocabulary segmentation with a `neco text-align` mapping (Talk2DINO's inference).

Each class name becomes prompts (`--templates`, e.g. the 7-prompt ImageNet subset); the text
encoder's prompt embeddings are averaged per class and mapped into the backbone's patch space; every
patch gets the cosine similarity to every class; scores are upsampled (bilinear) to the mask size and
the argmax is the prediction. Background (a dataset whose class 0 is named "background", e.g. VOC or
the scenes):
- `threshold` (the "with background" benchmarks): class 0 is not prompted; it is predicted where the
  best class score is below `--bg-threshold`, after Talk2DINO's attention-based background cleaning
  with weight `--bg-clean` (0: none);
- `drop` (the "without background" benchmarks, e.g. VOC-20): class 0 is not prompted and its pixels
  are ignored, so the mIoU is over the object classes;
- `none`: every class, background included, is prompted as a name.
`auto` is `threshold` for a dataset with a background class and `none` otherwise (COCO-Stuff,
Cityscapes, ADE20k: every class is a name). `--class-names FILE` (JSON {dataset class: prompt name})
renames classes for the prompts (VOC's joined names are spaced by default: `SPACED_NAMES`).
Inference options (Talk2DINO's evaluation, see docs/evaluation.md for what is verified):
- `--slide-window W` (0: off): each image is resized to `--slide-short-side` on its short side and
  scored in W x W windows `--slide-stride` apart (the fine-tuning protocol's `slide_scores`), the
  window scores averaged and upsampled to the label's own size; off, the image and mask are resized
  to the square `--input-size` and scored in one pass;
- `--pamr`: the class score maps, upsampled to the (window's) image size, are refined by PAMR
  (`neco.evaluation.blocks.pamr`) before the argmax and the background threshold.
Metrics: mIoU over the scored classes, pixel accuracy, per-class IoU (percent).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from neco.evaluation.blocks.metrics import ConfusionMatrix
from neco.evaluation.blocks.pamr import DEFAULT_DILATIONS, pamr
from neco.evaluation.blocks.seg_recipe import short_side_resize, slide_scores
from neco.evaluation.blocks.transforms import IMAGENET_MEAN, IMAGENET_STD, resize_ids, to_input
from neco.evaluation.features import Features
from neco.evaluation.options import option
from neco.evaluation.protocol import EvalData, Protocol, ProtocolOutput, RunContext, register_protocol
from neco.method.text_align import (
    PROMPT_TEMPLATES,
    clean_background,
    cls_patch_attention,
    prompt_texts,
    segment_scores,
)
from neco.method.text_checkpoint import load_text_align

__all__ = ["OpenVocabSettings", "OpenVocab", "chance_miou", "class_embeddings", "read_class_names"]

BACKGROUND_NAMES = ("background", "bg")
# VOC's joined class names read as words in prompts (applied before `--class-names`)
SPACED_NAMES = {"diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv monitor"}


@dataclass
class OpenVocabSettings:
    """Prompts, background handling and the mapping checkpoint of the open-vocabulary protocol."""

    mapping: str | None = option(None, "a `neco text-align` checkpoint (required)")
    templates: str = option("subset", "prompt templates", choices=tuple(PROMPT_TEMPLATES))
    background: str = option(
        "auto", "background handling (see docs/evaluation.md)", choices=("auto", "threshold", "drop", "none")
    )
    bg_threshold: float = option(0.55, "score below which a pixel is background (threshold mode)")
    bg_clean: float = option(0.2, "weight of the attention map in background cleaning (0: off)", minimum=0)
    class_names: str | None = option(None, "JSON file {dataset class name: prompt name}")
    text_download: bool = option(True, "download the text encoder's weights when they are not cached")
    slide_window: int = option(
        0, "sliding-window inference: window side in pixels (0: one pass at --input-size)", minimum=0
    )
    slide_stride: int = option(0, "sliding-window stride in pixels (0: half the window)", minimum=0)
    slide_short_side: int = option(448, "sliding window: images resized to this short side", minimum=1)
    pamr: bool = option(False, "refine the score maps with PAMR (pixel-adaptive mask refinement)")
    pamr_iterations: int = option(10, "PAMR iterations", minimum=1)
    pamr_dilations: tuple[int, ...] = option(DEFAULT_DILATIONS, "PAMR neighbourhood dilations", minimum=1)

    def check(self) -> None:
        """The mapping checkpoint is required; a sliding window's stride must not exceed the window."""
        if self.mapping is None:
            raise ValueError("`--mapping` is required: a checkpoint written by `neco text-align`")
        if self.slide_window and self.slide_stride_px() > self.slide_window:
            raise ValueError(
                f"`--slide-stride` ({self.slide_stride_px()}) must not exceed `--slide-window` ({self.slide_window}): "
                "pixels between windows would get no score"
            )

    def slide_stride_px(self) -> int:
        """The sliding-window stride in pixels: `slide_stride`, or half the window when it is 0."""
        return self.slide_stride or max(1, self.slide_window // 2)


def read_class_names(path: str | Path, names: list[str]) -> dict[str, str]:
    """The renames of `--class-names FILE`; unknown class names are refused, listing the dataset's."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--class-names {path}: file not found")
    try:
        renames = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"--class-names {path}: not valid JSON ({err})") from err
    if not isinstance(renames, dict) or not all(isinstance(v, str) and v.strip() for v in renames.values()):
        raise ValueError(f"--class-names {path}: must be a JSON object {{dataset class: prompt name}}")
    unknown = sorted(set(renames) - set(names))
    if unknown:
        raise ValueError(
            f"--class-names {path}: unknown class names {unknown}; the dataset's classes are {names}"
        )
    return {str(k): str(v) for k, v in renames.items()}


def chance_miou(dataset: Any, skip_background: bool = True) -> float:
    """Expected mIoU (percent) of predicting each scored pixel's class uniformly at random.

    Exact from the label histogram: class c with n_c of the N scored pixels, K classes, has expected
    IoU (n_c / K) / (n_c + N / K - n_c / K); the mean is over the classes present. With
    `skip_background` class 0 is neither scored nor predicted (the `drop` setting).
    """
    from neco.data.base import load_label

    counts = np.zeros(dataset.num_classes, dtype=np.float64)
    for _, label_path in dataset.pairs:
        label = load_label(label_path)
        if dataset.label_map is not None:
            label = dataset.label_map[np.clip(label, 0, len(dataset.label_map) - 1)]
        label = label[(label >= 0) & (label < dataset.num_classes)]
        counts += np.bincount(label.ravel(), minlength=dataset.num_classes)
    scored = counts[1:] if skip_background else counts
    total, k = scored.sum(), len(scored)
    present = scored[scored > 0]
    return float(100 * np.mean((present / k) / (present + total / k - present / k)))


@torch.no_grad()
def class_embeddings(mapping: Any, encoder: Any, names: list[str], templates: str) -> torch.Tensor:
    """Mapped class embeddings (C, D): each class's prompt embeddings averaged, then mapped (Talk2DINO)."""
    texts = [prompt_texts(name, templates) for name in names]
    per = len(texts[0])
    embedded = encoder.encode([t for group in texts for t in group]).cpu()  # (C * T, E)
    averaged = embedded.reshape(len(names), per, -1).mean(1)  # (C, E)
    return mapping(averaged)


@register_protocol
class OpenVocab(Protocol):
    """Zero-shot segmentation from class-name prompts through a text-to-patch mapping."""

    name = "openvocab"
    summary = "zero-shot open-vocabulary segmentation through a `neco text-align` mapping (Talk2DINO)"
    settings_class = OpenVocabSettings
    input_size = 448

    def run(
        self, features: Features, data: EvalData, settings: OpenVocabSettings, ctx: RunContext
    ) -> ProtocolOutput:
        """Confusion matrix of the prompted predictions over the validation split."""
        val = data.val
        names = [str(n) for n in val.class_names]
        has_background = names[0].lower() in BACKGROUND_NAMES
        mode = settings.background
        if mode == "auto":
            mode = "threshold" if has_background else "none"
        if mode in ("threshold", "drop") and not has_background:
            raise ValueError(
                f"`--background {mode}` needs a background class but {data.name or val.name}'s class 0 is "
                f"{names[0]!r}; use --background none (or auto)"
            )
        renames = {n: SPACED_NAMES[n] for n in names if n in SPACED_NAMES}
        if settings.class_names:
            renames.update(read_class_names(settings.class_names, names))
        prompted = names[1:] if mode in ("threshold", "drop") else names
        offset = len(names) - len(prompted)  # 1 when class 0 (background) is not prompted
        with ctx.timer("text"):
            mapping, encoder, meta = load_text_align(settings.mapping, download=settings.text_download)
            classes = class_embeddings(
                mapping, encoder, [renames.get(n, n) for n in prompted], settings.templates
            )
        cleaning = mode == "threshold" and settings.bg_clean > 0
        if cleaning:
            features.require_attention()

        def score(images: torch.Tensor) -> torch.Tensor:
            """Class scores (B, C, H, W) at the images' own size: cosines, cleaning, upsampling, PAMR."""
            grid = features(images).cpu()  # (B, D, h, w)
            scores = segment_scores(grid, classes)  # (B, C, h, w)
            if cleaning:
                weights = cls_patch_attention(features.attention(images), features.num_register_tokens)
                scores = clean_background(scores, grid, weights, classes, settings.bg_clean)
            scores = F.interpolate(scores, size=images.shape[-2:], mode="bilinear", align_corners=False)
            if settings.pamr:
                # on the backbone's device: 48 shifted sums x 10 iterations per class map are slow on a CPU
                device = features.device
                refined = pamr(
                    images.to(device), scores.to(device), settings.pamr_iterations, settings.pamr_dilations
                )
                scores = refined.cpu()
            return scores

        def predict(scores: torch.Tensor) -> torch.Tensor:
            """Dataset class ids (B, H, W) of scores (B, C, H, W): argmax, background below the threshold."""
            best, index = scores.max(dim=1)
            prediction = index + offset
            if mode == "threshold":
                prediction = torch.where(
                    best < settings.bg_threshold, torch.zeros_like(prediction), prediction
                )
            return prediction

        def scored(labels: torch.Tensor) -> torch.Tensor:
            """The labels (B, H, W) as scored: in `drop` mode the background pixels are ignored."""
            target = labels.clone()
            if mode == "drop":
                target[target == 0] = val.ignore_index
            return target

        confusion = ConfusionMatrix(len(names), val.ignore_index)
        keeper = ctx.keeper()
        if settings.slide_window:
            pairs = (val.load(index) for index in range(len(val)))  # PIL image, (H, W) label at full size
            for image, mask in ctx.iterate(pairs, "openvocab: sliding windows"):
                with ctx.timer("segment"):
                    resized = short_side_resize(image, settings.slide_short_side)
                    pixels = TF.normalize(TF.to_tensor(resized), IMAGENET_MEAN, IMAGENET_STD)
                    scores = slide_scores(
                        score, pixels, settings.slide_window, settings.slide_stride_px(), features.patch_size
                    )[None]  # (1, C, H', W')
                    scores = F.interpolate(scores, size=mask.shape, mode="bilinear", align_corners=False)
                    prediction = predict(scores)
                    target = scored(torch.from_numpy(np.asarray(mask, dtype=np.int64))[None])
                    confusion.update(prediction, target)
                if keeper.count < keeper.limit:  # square copies for the figure
                    size = ctx.input_size
                    keeper.offer(
                        images=to_input(image, size)[None],
                        masks=resize_ids(target, size),
                        predictions=resize_ids(prediction, size),
                    )
        else:
            for images, masks, _ in ctx.batches(val, "openvocab"):
                with ctx.timer("segment"):
                    scores = score(images)
                    if scores.shape[-2:] != masks.shape[-2:]:
                        scores = F.interpolate(
                            scores, size=masks.shape[-2:], mode="bilinear", align_corners=False
                        )
                    prediction = predict(scores)
                    target = scored(masks)
                    confusion.update(prediction, target)
                keeper.offer(images=images, masks=target, predictions=prediction)
        summary = confusion.summary(names)
        if mode == "drop":
            summary["per_class_iou"].pop(names[0], None)  # never scored: its pixels are ignored
        # settings hold values, never sentences: the templates are named by `templates`, the prompts
        # follow from the class names and `class_names`
        resolved = {
            "background": mode,
            "num_prompted_classes": len(prompted),
            "mapping_backbone": meta["backbone"],
            "text_encoder": meta["text"],
            "text_sha256": meta["text_sha256"],
            "mapping_step": meta.get("step"),
            "inference": (
                {
                    "slide_window": settings.slide_window,
                    "stride": settings.slide_stride_px(),
                    "short_side": settings.slide_short_side,
                }
                if settings.slide_window
                else {"single_pass": ctx.input_size}
            ),
            "pamr": (
                {"iterations": settings.pamr_iterations, "dilations": list(settings.pamr_dilations)}
                if settings.pamr
                else None
            ),
        }
        return ProtocolOutput(metrics=summary, settings=resolved, examples=keeper.examples())

    def figures(
        self, output: ProtocolOutput, features: Features, data: EvalData, out_dir: Path
    ) -> list[Path]:
        """image | GT | prediction panels, each prediction labelled with the class names it predicts."""
        from neco.viz import save_overlay_figure

        ex = output.examples
        if ex is None:
            return []
        names = list(data.val.class_names)
        path = save_overlay_figure(
            ex.images,
            ex.masks,
            ex.predictions,
            out_dir / "openvocab_predictions.png",
            num_classes=len(names),
            ignore_index=data.val.ignore_index,
        )
        return [_label_predictions(path, ex.predictions, names)]


def _label_predictions(path: Path, predictions: torch.Tensor, names: list[str], tile: int = 224) -> Path:
    """Write the predicted classes' names (largest area first, their palette colour) on each prediction tile."""
    from PIL import Image, ImageDraw

    from neco.utils.io import save_png
    from neco.viz.palette import class_palette

    palette = class_palette(len(names))
    with Image.open(path) as opened:
        canvas = opened.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    for row, prediction in enumerate(predictions):
        counts = torch.bincount(prediction.flatten().clamp(0, len(names) - 1), minlength=len(names))
        order = [int(c) for c in counts.argsort(descending=True) if counts[c] > 0][:6]
        for line, class_id in enumerate(order):
            x, y = 2 * tile + 4, row * tile + 4 + 14 * line
            text = names[class_id]
            # a white box with a swatch of the class colour, the name in black: readable for every colour
            draw.rectangle([x - 2, y - 1, x + 12 + 7 * len(text), y + 12], fill=(255, 255, 255))
            draw.rectangle([x, y + 1, x + 8, y + 10], fill=tuple(int(v) for v in palette[class_id]))
            draw.text((x + 11, y), text, fill=(0, 0, 0))
    return save_png(canvas, path)
