"""One command that checks neco's GPU path and measures it against the targets of the GPU issue.

    python benchmarks/gpu_check.py              # one CUDA GPU (H100 / H200): about 5-8 minutes
    python benchmarks/gpu_check.py --quick      # tiny sizes on the CPU in seconds (the test suite runs this)

Writes `gpu_check.json` and `gpu_check.md` into `--out` (default `runs/gpu_check`) and prints the table.
Sections: environment; `pytest -m gpu`; sorting fwd+bwd (neco vs diffsort, B = 3136 and 12544, n = 49);
one training step of the published ViT-S/14-reg recipe (neco defaults vs public-code settings, share of
sort + loss); Hummingbird at 1.0 M memory with the full-VOC time projected at 10.24 M; the model step of
`neco eval finetune` (ViT-S/14, mask decoder, 512 crops rounded to 518, batch 8) with 160k iterations
projected. Every section runs
in its own try/except: a failure is recorded in its row and the other sections still run. Targets are
judged only from values measured on CUDA in a full run; `--quick` and CPU rows say "n/a".
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmark modules (train_step, sorting)

from sorting import _median_time, _sync  # noqa: E402 - the timing helpers of benchmarks/sorting.py

COCO_TRAIN_IMAGES = 118_287
VOC_TRAIN_IMAGES, VOC_VAL_IMAGES, VOC_AUG_EPOCHS = 10_582, 1_449, 2
FULL_MEMORY = 10_240_000

TARGETS = {
    "sort_loss_share": "sort + loss < 5% of the training step",
    "speedup": "neco step >= 3x the images/s of the public-code settings",
    "peak_memory": "peak memory <= 40 GB at batch 64",
    "coco_hours": "25-epoch COCO run of ViT-S/14 projected <= 2.5 GPU-hours",
    "voc_minutes": "full-VOC Hummingbird (10.24 M memory) projected <= 5 minutes",
    "grad_error": "gradients within 1e-5 (relative to the largest) of diffsort, or as close to the float64 "
    "gradient as diffsort's float32 one",
}

Row = dict[str, Any]


def _row(section: str, check: str, value: str, kind: str = "measured", **extra: Any) -> Row:
    return {
        "section": section,
        "check": check,
        "value": value,
        "kind": kind,
        "target": "",
        "pass": None,
        **extra,
    }


def _judge(row: Row, target_key: str, ok: bool, judged: bool) -> Row:
    """Attach a target; `pass` is set only when the value was measured on CUDA in a full run."""
    row["target"] = TARGETS[target_key]
    row["pass"] = bool(ok) if judged else None
    return row


def _peak_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


# ----------------------------------------------------------------------------------------------
# sections


def section_environment(ctx: dict[str, Any]) -> list[Row]:
    """GPU name, driver, torch / triton / CUDA versions."""
    try:
        import triton

        triton_version = triton.__version__
    except Exception as error:  # Triton missing: recorded, not fatal
        triton_version = f"not importable ({type(error).__name__})"
    if ctx["cuda"]:
        gpu = torch.cuda.get_device_name(0)
        try:
            driver = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30,
            ).stdout.strip().splitlines()[0]  # fmt: skip
        except Exception as error:  # no nvidia-smi on PATH
            driver = f"unknown ({type(error).__name__})"
    else:
        gpu, driver = "none (no CUDA)", "-"
    return [
        _row("environment", "GPU", gpu, "info"),
        _row("environment", "driver", driver, "info"),
        _row(
            "environment",
            "versions",
            f"torch {torch.__version__}, CUDA {torch.version.cuda}, triton {triton_version}, "
            f"python {platform.python_version()}",
            "info",
        ),
    ]


def section_pytest(ctx: dict[str, Any]) -> list[Row]:
    """`pytest -m gpu` in a subprocess: the CUDA tests (sorting kernels, bf16 step)."""
    if not ctx["cuda"]:
        return [_row("pytest -m gpu", "CUDA tests", "skipped: no CUDA", "skipped")]
    if ctx["quick"]:
        return [_row("pytest -m gpu", "CUDA tests", "skipped: --quick", "skipped")]
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=ROOT, capture_output=True, text=True, timeout=ctx["pytest_timeout"],
    )  # fmt: skip
    seconds = time.perf_counter() - start
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-300:]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
    failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    row = _row("pytest -m gpu", "CUDA tests", f"{summary} ({seconds:.0f} s)", counts=counts)
    row["target"] = "all CUDA tests pass"
    row["pass"] = result.returncode == 0 and failed == 0 and counts.get("passed", 0) > 0
    if result.returncode != 0:
        row["error"] = (result.stdout[-4000:] + result.stderr[-2000:]).strip()
    return [row]


def section_sorting(ctx: dict[str, Any]) -> list[Row]:
    """Sorting fwd+bwd, neco (Triton on CUDA) vs diffsort 0.2.0: time, peak memory, gradient agreement."""
    import diffsort

    from neco.method.sorting import DiffSort
    from neco.method.sorting.backends import select

    device = ctx["device"]
    judged = ctx["judged"]
    n, steepness = 49, 100.0
    path, _ = select("auto", torch.zeros(1, n, device=device))
    rows: list[Row] = []
    generator = torch.Generator().manual_seed(0)
    for network in ("bitonic", "odd_even"):
        for batch in ctx["sort_batches"]:
            x = torch.randn(batch, n, generator=generator).to(device)
            weight = torch.randn(batch, n, n, generator=generator).to(device)
            timings: dict[str, dict[str, float | None]] = {}
            grads = {}
            for name, sorter in (
                ("neco", DiffSort(network, n, steepness, "cauchy").to(device)),
                ("diffsort", diffsort.DiffSortNet(network, n, steepness=steepness, device=str(device))),
            ):

                def fwd_bwd(
                    sorter: Any = sorter, x: torch.Tensor = x, weight: torch.Tensor = weight
                ) -> torch.Tensor:
                    leaf = x.clone().requires_grad_()
                    _, perm = sorter(leaf)
                    (perm * weight).sum().backward()
                    return leaf.grad

                grads[name] = fwd_bwd()
                timings[name] = {
                    "seconds": _median_time(fwd_bwd, ctx["reps"], device),
                    "peak_mb": _peak_mb(fwd_bwd, device),
                }
            # float64 reference gradient of the first rows (rows are independent; the reference path's
            # float64 graph of 12544 rows would need tens of GB)
            sub = min(batch, 2048)
            leaf64 = x[:sub].double().requires_grad_()
            _, perm64 = DiffSort(network, n, steepness, "cauchy", backend="reference").to(device)(leaf64)
            (perm64 * weight[:sub].double()).sum().backward()

            def rel(a: torch.Tensor, b: torch.Tensor) -> float:
                return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()

            error = rel(grads["neco"], grads["diffsort"])
            neco64 = rel(grads["neco"][:sub], leaf64.grad)
            diffsort64 = rel(grads["diffsort"][:sub], leaf64.grad)
            del leaf64, perm64
            ours, ref = timings["neco"], timings["diffsort"]

            def fmt(t: dict[str, float | None]) -> str:
                peak = "" if t["peak_mb"] is None else f", peak {t['peak_mb']:.0f} MB"
                return f"{t['seconds'] * 1e3:.2f} ms{peak}"

            value = (
                f"neco {fmt(ours)}; diffsort {fmt(ref)}; "
                f"{ref['seconds'] / ours['seconds']:.1f}x faster; grad rel. error vs diffsort {error:.1e}, "
                f"vs float64 reference (first {sub} rows): neco {neco64:.1e}, diffsort {diffsort64:.1e}"
            )
            row = _row(
                "sorting",
                f"fwd+bwd {network} B={batch} n={n} ({device.type})",
                value,
                neco=ours,
                diffsort=ref,
                grad_rel_error=error,
                grad_rel_error_float64={"neco": neco64, "diffsort": diffsort64},
            )
            accurate = error <= 1e-5 or neco64 <= 2 * diffsort64
            rows.append(_judge(row, "grad_error", accurate, judged))
    from neco.method.sorting import backends

    # "auto" falls back to the reference path (with a warning) if the Triton kernel fails to compile or launch.
    fell_back = bool(backends._triton_broken)
    path_row = _row(
        "sorting",
        f"neco path on {device.type}",
        path + (" (fell back to reference)" if fell_back else ""),
        "info",
    )
    if device.type == "cuda":
        path_row["target"] = "Triton kernel on CUDA, no fallback"
        path_row["pass"] = (path == "Triton kernel" and not fell_back) if judged else None
    return [path_row, *rows]


def _train_recipe(ctx: dict[str, Any]) -> tuple[str, list[str], int]:
    if ctx["quick"]:
        small = [
            "data.crops.global_size=32",
            "data.crops.local_size=16",
            "loss.roi_size=3",
            "loss.queue_size=64",
        ]
        return str(ROOT / "configs/tiny_cpu.yaml"), small, 2
    overrides = ["model.pretrained=false", "loss.queue_size=8192", "loss.roi_size=7"]
    return str(ROOT / "configs/small/neco_dinov2r.yaml"), overrides, 64


def _sort_loss_share(ctx: dict[str, Any], config_path: str, overrides: list[str], batch_size: int) -> Row:
    """Sort + loss fwd+bwd timed alone on the step's own grids, and the sort kernels' profiler share."""
    import train_step
    from torch.profiler import ProfilerActivity, profile

    from neco.training.config import load_config
    from neco.training.module import NeCoModule

    device = ctx["device"]
    torch.manual_seed(0)
    config = load_config(config_path, [*overrides, f"data.batch_size={batch_size}"])
    module = NeCoModule(config).to(device)
    module.train()
    batch = train_step._to(train_step._batch(config, batch_size), device)
    optimizer = module.configure_optimizers()
    bf16 = device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = module.compute_loss(batch)[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    views = batch["views"]
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        teacher_grids, _ = module._forward_views(
            module.teacher, module.teacher_head, views[: module.num_global]
        )
        student_grids, _ = module._forward_views(module.student, module.student_head, views)
    student_grids = [g.float() for g in student_grids]
    teacher_grids = [g.float() for g in teacher_grids]

    def loss_only() -> None:
        leaves = [g.detach().requires_grad_() for g in student_grids]
        out = module.loss_fn(leaves, teacher_grids, batch["boxes"].float(), batch["valid"], module.patch_size)
        out.loss.backward()

    step_s = _median_time(step, ctx["reps"], device)
    loss_s = _median_time(loss_only, ctx["reps"], device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        _sync(device)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = prof.key_averages()
    total = sum(getattr(e, attr, 0.0) for e in events)
    # neco's sorting-network kernels only (Triton on CUDA, the compiled op on CPU), not torch's argsort.
    names = ("_sort_kernel", "_sort_backward_kernel", "neco_sort::")
    sort_time = sum(getattr(e, attr, 0.0) for e in events if any(name in e.key for name in names))
    profiled = sort_time / total if total > 0 else float("nan")
    share = loss_s / step_s
    row = _row(
        "training step",
        "sort + loss share of the neco step",
        f"{100 * share:.1f}% (loss fwd+bwd {loss_s * 1e3:.1f} ms alone / step {step_s * 1e3:.1f} ms); "
        f"sort kernels {100 * profiled:.1f}% of profiled {'device' if device.type == 'cuda' else 'CPU'} time",
        share=share,
        loss_s=loss_s,
        step_s=step_s,
        profiler_sort_share=profiled,
    )
    return _judge(row, "sort_loss_share", share < 0.05, ctx["judged"])


def section_train_step(ctx: dict[str, Any]) -> list[Row]:
    """One training step: neco defaults vs public-code settings; memory; projected COCO time."""
    import train_step

    device = ctx["device"]
    if ctx["full_needs_cuda"]:
        return [_row("training step", "ViT-S/14-reg 518/98 batch 64", "skipped: no CUDA", "skipped")]
    config_path, overrides, batch_size = _train_recipe(ctx)
    steps, warmup = (1, 0) if ctx["quick"] else (3, 2)
    judged = ctx["judged"]
    rows: list[Row] = []
    results = {}
    for key in ("neco", "public"):
        try:
            results[key] = train_step.measure(
                key, config_path, overrides, batch_size, device.type, steps, warmup
            )
            r = results[key]
            rows.append(
                _row(
                    "training step",
                    f"{r['row']} ({r['backbone']}, {r['crops']}, batch {batch_size})",
                    f"{r['images_per_s']:.2f} images/s, {r['step_s'] * 1e3:.0f} ms/step, peak "
                    f"{r['peak_memory_mb']:.0f} MB ({r['memory_kind']}); {r['precision']}, {r['sorter']}",
                    result=r,
                )
            )
        except Exception as error:  # e.g. the public settings running out of memory: keep the neco row
            rows.append(_error_row("training step", f"{key} settings", error))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if "neco" in results:
        neco = results["neco"]
        peak_gb = neco["peak_memory_mb"] / 1024
        rows.append(
            _judge(
                _row("training step", "neco peak memory", f"{peak_gb:.1f} GB ({neco['memory_kind']})"),
                "peak_memory",
                peak_gb <= 40,
                judged,
            )
        )
        hours = COCO_TRAIN_IMAGES * 25 / neco["images_per_s"] / 3600
        rows.append(
            _judge(
                _row(
                    "training step",
                    "25 COCO epochs (118,287 images) at the measured images/s",
                    f"{hours:.2f} GPU-hours" if device.type == "cuda" else f"{hours:.1f} hours on this CPU",
                    "projected",
                ),
                "coco_hours",
                hours <= 2.5,
                judged,
            )
        )
    if "neco" in results and "public" in results:
        speedup = results["neco"]["images_per_s"] / results["public"]["images_per_s"]
        rows.append(
            _judge(
                _row("training step", "neco / public-code images/s", f"{speedup:.2f}x", speedup=speedup),
                "speedup",
                speedup >= 3,
                judged,
            )
        )
    try:
        rows.append(_sort_loss_share(ctx, config_path, overrides, batch_size))
    except Exception as error:
        rows.append(_error_row("training step", "sort + loss share of the neco step", error))
    return rows


def _hummingbird_blocks() -> dict[str, Any]:
    """The evaluation building blocks this check uses (kept in one place: the evaluation API may move)."""
    from neco.evaluation.blocks.memory_bank import MemoryBank
    from neco.evaluation.blocks.search import build_searcher
    from neco.evaluation.protocols.hummingbird import build_memory_bank, predict_soft_labels

    return {
        "build_memory_bank": build_memory_bank,
        "predict_soft_labels": predict_soft_labels,
        "build_searcher": build_searcher,
        "MemoryBank": MemoryBank,
    }


def section_hummingbird(ctx: dict[str, Any]) -> list[Row]:
    """Hummingbird with a random-weight backbone on random images: bank at 1.0 M, projected full VOC."""
    from neco.backbones import create

    device = ctx["device"]
    if ctx["full_needs_cuda"]:
        return [_row("hummingbird", "ViT-S/14 504 px, 1.0 M memory", "skipped: no CUDA", "skipped")]
    blocks = _hummingbird_blocks()
    if ctx["quick"]:
        backbone, size, train_images, val_images, memory, batch = "vit_tiny", 64, 4, 2, 64, 2
    else:
        backbone, size, train_images, val_images, memory, batch = (
            "dinov2_vits14",
            504,
            1060,
            145,
            1_024_000,
            64,
        )
    torch.manual_seed(0)
    model = create(backbone, pretrained=False).to(device).eval()
    patch = int(model.patch_size)
    grid = size // patch
    classes = 21
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    coarse = torch.randint(0, classes, (batch, 1, 6, 6), generator=generator).float()
    masks = torch.nn.functional.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long().to(device)
    bf16 = device.type == "cuda"

    @torch.no_grad()
    def features(count: int) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            tokens = model.forward_features(images[:count])["x_norm_patchtokens"]  # (B, h*w, D)
        return tokens.float().transpose(1, 2).reshape(count, -1, grid, grid)  # (B, D, h, w)

    def stream(total: int):
        for start in range(0, total, batch):
            count = min(batch, total - start)
            yield features(count), masks[:count]

    features(1)  # warm-up
    _sync(device)
    start = time.perf_counter()
    bank = blocks["build_memory_bank"](
        stream(train_images * VOC_AUG_EPOCHS),
        num_images=train_images,
        memory_size=memory,
        augmentation_epochs=VOC_AUG_EPOCHS,
        num_classes=classes,
        ignore_index=255,
        device=device,
    )
    _sync(device)
    build_s = time.perf_counter() - start
    if not isinstance(bank, blocks["MemoryBank"]):
        raise TypeError(f"build_memory_bank returned {type(bank).__name__}, expected MemoryBank")
    start = time.perf_counter()
    searcher = blocks["build_searcher"](bank.stored()[0], "auto")
    index_s = time.perf_counter() - start
    start = time.perf_counter()
    val_features = [f for f, _ in stream(val_images)]
    _sync(device)
    val_forward_s = time.perf_counter() - start
    start = time.perf_counter()
    for f in val_features:
        blocks["predict_soft_labels"](f, bank, searcher, k=30, temperature=0.02)
    _sync(device)
    search_s = time.perf_counter() - start
    scale_train = VOC_TRAIN_IMAGES / train_images
    scale_val = VOC_VAL_IMAGES / val_images
    scale_memory = FULL_MEMORY / bank.size
    projected_s = (
        build_s * scale_train
        + index_s * scale_memory
        + val_forward_s * scale_val
        + search_s * scale_val * scale_memory
    )
    measured = _row(
        "hummingbird",
        f"{backbone} {size} px, {bank.size:,} memory, {train_images}x{VOC_AUG_EPOCHS} train / {val_images} val images",
        f"bank (forwards + fill) {build_s:.1f} s, index {index_s:.2f} s, val forwards {val_forward_s:.1f} s, "
        f"search {search_s:.1f} s ({searcher.name}), bank {bank.nbytes() / 2**20:.0f} MB",
        build_s=build_s,
        index_s=index_s,
        val_forward_s=val_forward_s,
        search_s=search_s,
        memory=bank.size,
    )
    projected = _row(
        "hummingbird",
        "full VOC (10,582 x 2 train, 1,449 val) at 10.24 M memory",
        f"{projected_s / 60:.2f} min (exact search scaled linearly with memory)",
        "projected",
        projected_s=projected_s,
    )
    return [measured, _judge(projected, "voc_minutes", projected_s <= 300, ctx["judged"])]


def section_finetune(ctx: dict[str, Any]) -> list[Row]:
    """`neco eval finetune`'s model step (Segmenter mask decoder, SGD, bf16 on CUDA): images/s, projected 160k steps."""
    from neco.backbones import create
    from neco.evaluation.blocks.segmenter import SegmenterModel, build_decoder, set_drop_path

    device = ctx["device"]
    if ctx["full_needs_cuda"]:
        return [_row("finetune", "ViT-S/14 518 px crops, batch 8", "skipped: no CUDA", "skipped")]
    if ctx["quick"]:
        backbone, size, batch, steps = "vit_tiny", 32, 2, 3
    else:
        backbone, size, batch, steps = "dinov2_vits14", 518, 8, 20  # 512 crops rounded to whole /14 patches
    torch.manual_seed(0)
    encoder = create(backbone, pretrained=False)
    set_drop_path(encoder, 0.1)
    model = SegmenterModel(encoder, build_decoder("mask", int(encoder.embed_dim), 150)).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    masks = torch.randint(0, 150, (batch, size, size), generator=generator).to(device)
    bf16 = device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), masks, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    per_step = (time.perf_counter() - start) / steps
    peak = _peak_mb(step, device)
    measured = _row(
        "finetune",
        f"{backbone} + mask decoder (150 classes), {size} px crops, batch {batch}, {'bf16' if bf16 else 'fp32'}, "
        "model step only (no data loading)",
        f"{per_step * 1000:.0f} ms/step, {batch / per_step:.1f} images/s"
        + (f", peak {peak:.0f} MB" if peak is not None else ""),
        step_s=per_step,
        images_per_s=batch / per_step,
        peak_mb=peak,
    )
    projected = _row(
        "finetune",
        "160k iterations (Segmenter's ADE20k schedule)",
        f"{per_step * 160_000 / 3600:.2f} h",
        "projected",
        projected_s=per_step * 160_000,
    )
    return [measured, projected]


COCO_CAPTIONS_TRAIN = 591_753  # captions in COCO Captions captions_train2017.json (5 or more per image)


def section_text_align(ctx: dict[str, Any]) -> list[Row]:
    """`neco text-align` throughput: ViT-B/14 pooled features, CLIP ViT-B/16 text, mapping steps; one COCO epoch."""
    import open_clip

    from neco.backbones import create
    from neco.method.text_align import (
        HeadSelectInfoNCE,
        TextToPatchMapping,
        cls_patch_attention,
        head_pooled_embeddings,
    )
    from neco.method.text_encoder import TextEncoder, tiny_text_config

    device = ctx["device"]
    if ctx["full_needs_cuda"]:
        return [_row("text-align", "ViT-B/14 + CLIP ViT-B/16 text", "skipped: no CUDA", "skipped")]
    if ctx["quick"]:
        backbone, size, batch, reps = "vit_tiny", 64, 4, 1
        clip = open_clip.CLIP(**tiny_text_config())
    else:
        backbone, size, batch, reps = "dinov2_vitb14_reg", 448, 128, 3
        clip = open_clip.create_model("ViT-B-16", pretrained=None)  # random weights: speed only
    torch.manual_seed(0)
    model = create(backbone, pretrained=False).to(device).eval()
    encoder = TextEncoder(clip, open_clip.get_tokenizer("ViT-B-16"), {"model": "ViT-B-16"}).to(device)
    if ctx["quick"]:
        from open_clip.tokenizer import SimpleTokenizer

        encoder.tokenizer = SimpleTokenizer(context_length=16)
    images = torch.randn(batch, 3, size, size, device=device)
    captions = [f"a photo of {batch - i} dogs playing with a red ball on the grass" for i in range(batch)]
    mapping = TextToPatchMapping(encoder.embed_dim, int(model.embed_dim)).to(device)
    loss_fn = HeadSelectInfoNCE().to(device)
    optimizer = torch.optim.AdamW([*mapping.parameters(), *loss_fn.parameters()], lr=1e-4)
    bf16 = device.type == "cuda"
    regs = int(model.num_register_tokens)

    @torch.no_grad()
    def pooled() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            patches = model.forward_features(images)["x_norm_patchtokens"]
            weights = cls_patch_attention(model.get_last_self_attention(images), regs)
            return head_pooled_embeddings(patches, weights)

    features = pooled()
    text = encoder.encode(captions)

    def step() -> None:
        loss, _ = loss_fn(features, mapping(text))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    image_s = _median_time(pooled, reps, device)
    text_s = _median_time(lambda: encoder.encode(captions), reps, device)
    step_s = _median_time(step, reps, device)
    images_per_s, captions_per_s, pairs_per_s = batch / image_s, batch / text_s, batch / step_s
    epoch_s = (
        COCO_TRAIN_IMAGES / images_per_s
        + COCO_CAPTIONS_TRAIN / captions_per_s
        + COCO_CAPTIONS_TRAIN / pairs_per_s
    )
    name = f"{backbone} {size} px + {'tiny' if ctx['quick'] else 'CLIP ViT-B/16'} text, batch {batch}"
    measured = _row(
        "text-align",
        name,
        f"pooled features {images_per_s:.0f} images/s, text {captions_per_s:.0f} captions/s, "
        f"mapping step {pairs_per_s:.0f} pairs/s",
        images_per_s=images_per_s,
        captions_per_s=captions_per_s,
        pairs_per_s=pairs_per_s,
    )
    projected = _row(
        "text-align",
        "one COCO Captions epoch (118,287 images once, 591,753 captions, cached features)",
        f"{epoch_s / 60:.1f} min",
        "projected",
        projected_s=epoch_s,
    )
    return [measured, projected]


SECTIONS: list[tuple[str, Callable[[dict[str, Any]], list[Row]]]] = [
    ("environment", section_environment),
    ("pytest -m gpu", section_pytest),
    ("sorting", section_sorting),
    ("training step", section_train_step),
    ("hummingbird", section_hummingbird),
    ("finetune", section_finetune),
    ("text-align", section_text_align),
]


def _error_row(section: str, check: str, error: BaseException) -> Row:
    row = _row(
        section,
        check,
        f"error: {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}",
        "error",
    )
    row["error"] = traceback.format_exc()[-4000:]
    return row


def _cell(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def to_markdown(report: dict[str, Any]) -> str:
    """The report's rows as a markdown table (pass: yes / NO / n/a)."""
    lines = ["| section | check | value | kind | target | pass |", "|---|---|---|---|---|---|"]
    for row in report["rows"]:
        verdict = {True: "yes", False: "NO", None: "n/a"}[row["pass"]]
        cells = [row["section"], row["check"], row["value"], row["kind"], row["target"] or "-", verdict]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _run_sections(ctx: dict[str, Any], wanted: list[str], argv: list[str] | None) -> dict[str, Any]:
    """Run the wanted sections in order; a failing section becomes an error row."""
    started = time.perf_counter()
    report: dict[str, Any] = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(
            ["python", "benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "quick": ctx["quick"],
        "device": str(ctx["device"]),
        "targets": TARGETS,
        "rows": [],
    }
    for name, fn in SECTIONS:
        if name not in wanted:
            continue
        section_start = time.perf_counter()
        try:
            rows = fn(ctx)
        except Exception as error:  # one broken section must not lose the others' rows
            rows = [_error_row(name, name, error)]
        for row in rows:
            row.setdefault("seconds", round(time.perf_counter() - section_start, 2))
        report["rows"].extend(rows)
        print(f"# {name}: {time.perf_counter() - section_start:.1f} s", file=sys.stderr, flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    """Run every section, write gpu_check.json and gpu_check.md, print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes; CPU when no CUDA (seconds)")
    parser.add_argument(
        "--out", default=str(ROOT / "runs" / "gpu_check"), help="folder for the JSON and table"
    )
    parser.add_argument(
        "--sections", default=",".join(name for name, _ in SECTIONS), help="comma-separated subset"
    )
    parser.add_argument("--pytest-timeout", type=int, default=240, help="seconds for `pytest -m gpu`")
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(wanted) - {name for name, _ in SECTIONS})
    if unknown:
        parser.error(
            f"--sections must name sections of {[name for name, _ in SECTIONS]} but includes {unknown}"
        )
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    ctx = {
        "quick": args.quick,
        "cuda": cuda,
        "device": device,
        "judged": cuda and not args.quick,
        "full_needs_cuda": not cuda and not args.quick,
        "sort_batches": [16] if args.quick else [3136, 12544],
        "reps": 1 if args.quick else 5,
        "pytest_timeout": args.pytest_timeout,
    }
    threads = torch.get_num_threads()
    if not cuda:
        # Steep soft sorts drive far-off P entries into subnormal floats, ~100x slower on x86 CPUs; one thread
        # so the flush flag covers every kernel (and a shared test machine is not oversubscribed).
        torch.set_num_threads(1)
        torch.set_flush_denormal(True)
    try:
        report = _run_sections(ctx, wanted, argv)
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = to_markdown(report)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    header = f"# gpu_check ({report['created']}, {report['device']}, {report['seconds']} s)\n\n"
    (out / "gpu_check.md").write_text(header + table)
    print(header + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
