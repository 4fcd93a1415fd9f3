"""The fine-tuning defaults are Segmenter's recipe, and the documented per-dataset commands resolve to the published values."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from neco.cli import build_parser
from neco.evaluation import RunSettings
from neco.evaluation.options import from_args
from neco.evaluation.protocols.finetune import Finetune, FinetuneSettings, published_iterations

DOCS = Path(__file__).resolve().parents[2] / "docs" / "evaluation.md"

# (crop, short side, window stride, batch, lr, iterations): segm/config.yml of rstrudel/segmenter for
# ade20k, pascal_context and cityscapes (iterations = epochs x images / batch, rounded to the schedule
# neco uses); COCO-Stuff-164k and VOC are not in Segmenter's code: ADE20k's values and the counts
PUBLISHED = {
    "ade20k": (512, 512, 512, 8, 1e-3, 160_000),
    "pascal-context": (480, 520, 320, 16, 1e-3, 80_000),
    "cityscapes": (768, 1024, 512, 8, 1e-2, 80_000),
    "coco-stuff-164k": (512, 512, 512, 8, 1e-3, 160_000),
    "voc": (512, 512, 512, 8, 1e-3, 80_000),
}


def test_defaults_are_segmenters_recipe() -> None:
    settings = FinetuneSettings()
    assert (settings.lr, settings.momentum, settings.weight_decay) == (1e-3, 0.9, 0.0)
    assert (settings.poly_power, settings.min_lr, settings.drop_path) == (0.9, 1e-5, 0.1)
    assert (settings.decoder, settings.decoder_layers, settings.decoder_dropout) == ("mask", 2, 0.1)
    assert settings.ratio_range == (0.5, 2.0) and settings.photometric
    assert (settings.test_scales, settings.test_flip, settings.iterations) == ((1.0,), False, None)
    assert (settings.freeze_blocks, settings.layer_decay, settings.decoder_lr_scale) == (0, 1.0, 1.0)
    assert Finetune.input_size == 512 and RunSettings().batch_size == 8
    for name, recipe in PUBLISHED.items():
        assert published_iterations(name) == recipe[-1], name


def _doc_commands() -> dict[str, list[str]]:
    commands = {}
    for line in DOCS.read_text().splitlines():
        if line.startswith("neco eval finetune --dataset "):
            argv = shlex.split(line.split("#")[0])[1:]
            commands[argv[argv.index("--dataset") + 1]] = argv
    return commands


def _doc_table() -> dict[str, tuple[float, ...]]:
    """The rows of the *Per dataset* table of docs/evaluation.md, as numbers."""
    rows = {}
    for line in DOCS.read_text().splitlines():
        match = re.match(
            r"\| `([a-z0-9-]+)`(?: \(trainaug\))? \| (\d+) \| (\d+) \| (\d+) / (\d+) \| (\d+) \| ([0-9e.-]+) \| (\d+)k",
            line,
        )
        if match:
            name, crop, short, window, stride, batch, lr, kilo = match.groups()
            assert window == crop, line  # Segmenter's window is the crop
            rows[name] = (int(crop), int(short), int(stride), int(batch), float(lr), int(kilo) * 1000)
    return rows


def test_documented_commands_and_table_give_the_published_values() -> None:
    assert _doc_table() == PUBLISHED
    commands = _doc_commands()
    assert set(commands) == set(PUBLISHED)
    parser = build_parser()
    for name, argv in commands.items():
        args = parser.parse_args(argv)
        settings = from_args(FinetuneSettings, args)
        crop = args.input_size or Finetune.input_size
        resolved = (
            crop,
            settings.short_side or crop,
            settings.window_stride or crop,
            args.batch_size,
            settings.lr,
            settings.iterations or published_iterations(name),
        )
        assert resolved == PUBLISHED[name], (name, resolved)
