"""Fault injection on the tiny preset: does a training run ever lose work or silently change?

Every fault runs a short run (tiny ViT, 32 px crops, batch 2) and ends in one of:
  exact    the final weights (student, teacher, heads) equal those of an uninterrupted run,
           bit for bit (for a changed learning rate: the new rate is what the optimizer used);
  refused  the run stopped with a clear one-line message naming the problem;
and is counted as `lost` when a checkpoint completed before the fault is gone or unreadable, or
when the run neither ended exact nor refused.

Faults:
  sigkill          SIGKILL at a random step, in the step or in the middle of a checkpoint write
  sigterm          SIGTERM mid-run (preemption): saves after the step, exit 143, resume
  double_sigint    two Ctrl-C mid-step: abort without a mid-step save, exit 130, resume
  truncated_newest newest checkpoint cut in half, then --resume auto
  corrupt_newest   4 KB of 0xFF inside the newest checkpoint, then --resume auto
  disk_full        a file size limit (RLIMIT_FSIZE) after the first checkpoint
  rerun_existing   a new run (no --resume) into a folder holding checkpoints
  changed_lr       resume with another optim.lr_backbone (applied and recorded)
  changed_loss     resume with another loss.steepness_student (must be refused)

Round three (issue 26, `--issue26`, written to its own JSON):
  nonfinite_setting  optim.lr_backbone=.inf and =.nan on the command line (refused, no run folder)
  divergence         lr 1000 from step 2: exploded steps set aside, the named checkpoint resumes
  concurrent_runs    two `neco train` into one folder at the same time (one refused)
  eval_last_ckpt     `neco eval` of two runs' last.ckpt with the default --out (two result folders)
  duplicate_yaml     a preset with a second `optim:` block (refused, file and line named)
  garbage_finite     random floats written into student.pos_embed, then --resume auto (falls back)
  random_subset      hummingbird --fraction 1/2 on a split without a published list (warned)
  changed_images     resume after one training image was renamed and one removed (refused)
  unwritable_out     `neco eval` into an --out that cannot be created (refused before any feature)

The killed runs are subprocesses (`neco train`, one thread); resumes run in this process with one
thread too, so weights are comparable bit for bit.

  python benchmarks/faults.py --sigkill-trials 20 --out benchmarks/results/faults.json
  python benchmarks/faults.py --issue26 --out benchmarks/results/faults_issue26.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "tiny_cpu.yaml"
FAST = [
    "data.batch_size=2",
    "data.crops.global_size=32",
    "data.crops.local_size=16",
    "data.crops.num_local=2",
    "loss.roi_size=3",
    "loss.queue_size=32",
    "model.head_hidden_dim=64",
    "model.head_out_dim=32",
    "data.synthetic_images=8",
    "data.synthetic_size=48",
    "run.loggers=[csv]",
    "run.progress=false",
    "run.ckpt_every_steps=1",
    "run.keep_checkpoints=3",
]

# Run inside the killed subprocess: record every completed save, then die where the trial says.
HOOK = """
import io, os, signal, sys
from neco.training import checkpoint as ck, module as m
KILL_STEP, PHASE, LOG = int(os.environ["FAULT_STEP"]), os.environ["FAULT_PHASE"], os.environ["FAULT_LOG"]
_save = ck.PeriodicCheckpoint.save
def save(self, trainer):
    path = _save(self, trainer)
    with open(LOG, "a") as handle:
        handle.write(f"{trainer.global_step}\\n")
    return path
ck.PeriodicCheckpoint.save = save
_step = m.NeCoModule.training_step
def step(self, batch, batch_idx):
    if PHASE == "step" and self.global_step == KILL_STEP - 1:
        os.kill(os.getpid(), signal.SIGKILL)
    if PHASE in ("SIGTERM", "SIGINT2") and self.global_step == KILL_STEP - 1:
        for _ in range(1 if PHASE == "SIGTERM" else 2):
            os.kill(os.getpid(), signal.SIGTERM if PHASE == "SIGTERM" else signal.SIGINT)
    return _step(self, batch, batch_idx)
m.NeCoModule.training_step = step
_write = ck.atomic_torch_save
def write(obj, path):
    if PHASE == "write" and f"step_{KILL_STEP:08d}" in str(path):
        def half(handle):
            buffer = io.BytesIO()
            import torch
            torch.save(obj, buffer)
            handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        from neco.utils.io import atomic_write
        return atomic_write(path, half)
    if PHASE == "fsize" and int(os.environ.get("FAULT_DONE", "0")):
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    os.environ["FAULT_DONE"] = "1"
    return _write(obj, path)
ck.atomic_torch_save = write
from neco.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _overrides(out: Path, scenes: Path, steps: int, *extra: str) -> list[str]:
    return [*FAST, f"data.root={scenes}", f"run.out_dir={out}", f"optim.max_steps={steps}", *extra]


def _train(out: Path, scenes: Path, steps: int, *extra: str, **kwargs: Any) -> Any:
    from neco.training.config import load_config
    from neco.training.run import train

    return train(load_config(PRESET, _overrides(out, scenes, steps, *extra)), **kwargs)


def _subprocess(
    work: Path, out: Path, scenes: Path, steps: int, phase: str, kill_step: int
) -> tuple[int, str, list[int]]:
    """`neco train` with the fault hook; returns (exit code, stderr, steps whose save completed)."""
    script = work / "hooked_cli.py"
    script.write_text(HOOK)
    log = work / f"saves_{out.name}.txt"
    log.unlink(missing_ok=True)
    env = dict(
        os.environ, OMP_NUM_THREADS="1", FAULT_STEP=str(kill_step), FAULT_PHASE=phase, FAULT_LOG=str(log)
    )
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    args = [sys.executable, str(script), "train", "--config", str(PRESET), *_overrides(out, scenes, steps)]
    proc = subprocess.run([*args, "--no-progress"], env=env, capture_output=True, text=True, timeout=600)
    saved = [int(x) for x in log.read_text().split()] if log.exists() else []
    return proc.returncode, proc.stderr, saved


def _weights(path: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return {
        f"{k}.{n}": t
        for k in ("student", "teacher", "student_head", "teacher_head")
        for n, t in checkpoint[k].items()
    }


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _newest_readable_step(checkpoint_dir: Path) -> int:
    from neco.training.checkpoint import resolve_resume

    path = resolve_resume("auto", checkpoint_dir)
    return -1 if path is None else int(torch.load(path, map_location="cpu", weights_only=True)["step"])


class Tally:
    """Counts per fault plus one line per trial."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def add(self, fault: str, outcome: str, lost: bool, detail: str) -> None:
        row = self.rows.setdefault(
            fault, {"fault": fault, "trials": 0, "exact": 0, "refused": 0, "lost": 0, "details": []}
        )
        row["trials"] += 1
        if outcome in ("exact", "refused"):
            row[outcome] += 1
        row["lost"] += int(lost or outcome not in ("exact", "refused"))
        row["details"].append(f"{outcome}{' LOST' if lost else ''}: {detail}")
        print(f"  {fault:16s} {outcome:8s}{' LOST' if lost else ''}  {detail}", flush=True)


def _resume_and_compare(out: Path, scenes: Path, steps: int, reference: dict[str, torch.Tensor]) -> bool:
    result = _train(out, scenes, steps, resume="auto")
    return result.global_step == steps and _equal(_weights(result.last_checkpoint), reference)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from neco.data.synthetic import write_scenes

    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="neco_faults_"))
    scenes = write_scenes(work / "scenes", num_train=8, num_val=4, size=48, progress=False)
    steps = args.steps
    tally = Tally()
    started = time.time()
    reference = _weights(_train(work / "reference", scenes, steps).last_checkpoint)

    for trial in range(args.sigkill_trials):
        kill_step, phase = rng.randint(1, steps), rng.choice(["step", "write"])
        out = work / f"kill{trial}"
        code, _, saved = _subprocess(work, out, scenes, steps, phase, kill_step)
        newest = _newest_readable_step(out / "checkpoints")
        lost = bool(saved) and newest < max(saved)
        exact = code == -9 and not lost and _resume_and_compare(out, scenes, steps, reference)
        tally.add("sigkill", "exact" if exact else "failed", lost,
                  f"{phase} of step {kill_step}: exit {code}, saves done {saved}, resumed from {newest}")  # fmt: skip
        shutil.rmtree(out)

    for fault, phase, expected in (("sigterm", "SIGTERM", 143), ("double_sigint", "SIGINT2", 130)):
        out = work / fault
        code, stderr, saved = _subprocess(work, out, scenes, steps, phase, 2)
        newest = _newest_readable_step(out / "checkpoints")
        lost = bool(saved) and newest < max(saved)
        exact = code == expected and not lost and _resume_and_compare(out, scenes, steps, reference)
        tally.add(
            fault,
            "exact" if exact else "failed",
            lost,
            f"exit {code}, saves {saved}: {stderr.strip().splitlines()[-1]}",
        )

    for fault in ("truncated_newest", "corrupt_newest"):
        out = work / fault
        _train(out, scenes, steps, f"run.stop_at_step={steps - 1}")
        newest = out / "checkpoints" / f"step_{steps - 1:08d}.ckpt"
        data = bytearray(newest.read_bytes())
        if fault == "truncated_newest":
            data = data[: len(data) // 2]
        else:
            data[len(data) // 2 : len(data) // 2 + 4096] = b"\xff" * 4096
        newest.write_bytes(bytes(data))
        before = _newest_readable_step(out / "checkpoints")
        lost = before != steps - 2
        exact = _resume_and_compare(out, scenes, steps, reference)
        tally.add(fault, "exact" if exact else "failed", lost, f"--resume auto fell back to step {before}")

    out = work / "disk_full"
    code, stderr, saved = _subprocess(work, out, scenes, steps, "fsize", 0)
    message = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    refused = code == 1 and "could not write checkpoint" in message and "Traceback" not in stderr
    lost = not saved or _newest_readable_step(out / "checkpoints") != max(saved)
    tally.add("disk_full", "refused" if refused else "failed", lost, f"exit {code}: {message}")

    out = work / "rerun"
    _train(out, scenes, 2)
    before = {p.name: p.read_bytes() for p in (out / "checkpoints").glob("step_*.ckpt")}
    try:
        _train(out, scenes, 2)
        outcome, message = "failed", "a new run started over the old checkpoints"
    except FileExistsError as err:
        outcome, message = "refused", str(err)
    lost = {p.name: p.read_bytes() for p in (out / "checkpoints").glob("step_*.ckpt")} != before
    tally.add("rerun_existing", outcome, lost, message)

    out = work / "changed"
    _train(out, scenes, steps, "run.stop_at_step=2")
    result = _train(out, scenes, steps, "optim.lr_backbone=0.002", resume="auto")
    from neco.method.schedules import cosine_schedule

    groups = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)["optimizer_states"][0][
        "param_groups"
    ]
    used = [g["lr"] for g in groups if g["name"].startswith("backbone")]
    applied = all(abs(lr - cosine_schedule(0.002, 0.0, steps)(steps - 1)) < 1e-12 for lr in used)
    recorded = (out / "config_changes.yaml").is_file() and "optim.lr_backbone" in result.config_changes
    tally.add("changed_lr", "exact" if applied and recorded else "failed", False,
              f"backbone lr at the last step {used[0]:.3g}, recorded in config_changes.yaml: {recorded}")  # fmt: skip
    try:
        _train(out, scenes, steps + 1, "optim.lr_backbone=0.002", "loss.steepness_student=50", resume="auto")
        outcome, message = "failed", "resumed with another loss"
    except ValueError as err:
        outcome, message = "refused", str(err)[:160]
    tally.add("changed_loss", outcome, _newest_readable_step(out / "checkpoints") != steps, message)

    shutil.rmtree(work, ignore_errors=True)
    return {
        "benchmark": "faults",
        "settings": {
            "steps": steps,
            "sigkill_trials": args.sigkill_trials,
            "seed": args.seed,
            "overrides": FAST,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_end": list(os.getloadavg()),
            "torch": torch.__version__,
            "threads": 1,
        },
        "seconds": time.time() - started,
        "faults": list(tally.rows.values()),
    }


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`neco ARGS` in a subprocess (one thread), this checkout's sources first."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    command = [
        sys.executable,
        "-c",
        "import sys; from neco.cli import main; sys.exit(main(sys.argv[1:]))",
        *args,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=cwd)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _eval_args(scenes: Path, backbone: str, protocol: str = "overcluster") -> list[str]:
    common = ["--dataset", "scenes", "--data-root", str(scenes), "--backbone", backbone, "--input-size", "48"]
    common += [
        "--num-workers",
        "0",
        "--no-progress",
        "--batch-size",
        "4",
        "--num-figures",
        "0",
        "--threads",
        "1",
    ]
    if protocol == "overcluster":
        common += ["--ks", "4", "--num-seeds", "1", "--niter", "5", "--nredo", "1", "--target-size", "24"]
    return ["eval", protocol, *common]


def run_issue26(args: argparse.Namespace) -> dict[str, Any]:
    """The round-three faults (issue 26): each must end refused (one clear line) or exact, nothing lost."""
    from neco.data.synthetic import write_scenes
    from neco.training.module import NonFiniteLossError

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="neco_faults26_"))
    scenes = write_scenes(work / "scenes", num_train=8, num_val=4, size=48, progress=False)
    steps = args.steps
    tally = Tally()
    started = time.time()
    train_args = ["train", "--config", str(PRESET), *FAST, f"data.root={scenes}", f"optim.max_steps={steps}"]

    for value in (".inf", ".nan"):
        out = work / f"nonfinite{value}"
        proc = _cli(*train_args, f"optim.lr_backbone={value}", "--out", str(out))
        refused = (
            proc.returncode == 2
            and "must be a finite number" in proc.stderr
            and "Traceback" not in proc.stderr
        )
        tally.add("nonfinite_setting", "refused" if refused else "failed", out.exists(),
                  f"lr_backbone={value}: exit {proc.returncode}, run folder created: {out.exists()}: {_last_line(proc.stderr)}")  # fmt: skip

    out = work / "divergence"
    _train(out, scenes, 8, "run.stop_at_step=2", "run.keep_checkpoints=10")
    try:
        _train(
            out,
            scenes,
            8,
            "optim.lr_backbone=1000",
            "optim.lr_head=1000",
            "run.keep_checkpoints=10",
            resume="auto",
        )
        outcome, detail, named = "failed", "lr 1000 did not diverge", None
    except NonFiniteLossError as err:
        named = err.resume_from
        outcome, detail = "refused", _last_line(str(err))[-160:]
    diverged = sorted(p.name for p in (out / "checkpoints").glob("diverged_*.ckpt"))
    maxima = [
        torch.load(p, map_location="cpu", weights_only=True)["health"]["weight_max"]
        for p in sorted((out / "checkpoints").glob("diverged_*.ckpt"))
    ]
    resumed = _train(out, scenes, 8, "run.keep_checkpoints=10", resume="auto") if named else None
    ok = (
        named is not None
        and named.name == "step_00000002.ckpt"
        and resumed is not None
        and resumed.global_step == 8
    )
    tally.add("divergence", outcome if ok else "failed", not ok,
              f"named {named.name if named else None}; set aside {diverged} (max |w| {[f'{m:.3g}' for m in maxima]}); "
              f"resumed at normal lr to step {resumed.global_step if resumed else None}: {detail}")  # fmt: skip

    out = work / "concurrent"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-c", "import sys; from neco.cli import main; sys.exit(main(sys.argv[1:]))"]
    procs = [
        subprocess.Popen(
            [*command, *train_args, "--out", str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=900) for p in procs]
    codes = sorted(p.returncode for p in procs)
    refused_text = [e for (_, e), p in zip(outputs, procs) if p.returncode != 0]
    saved = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    from neco.training.config import config_to_dict, load_config

    consistent = config_to_dict(load_config(out / "config.yaml")) == saved["config"]
    refused = codes == [0, 2] and bool(refused_text) and "in use by another neco train" in refused_text[0]
    tally.add("concurrent_runs", "refused" if refused else "failed", not consistent,
              f"exit codes {codes}; config.yaml matches the checkpoints: {consistent}; "
              f"{_last_line(refused_text[0]) if refused_text else 'no run refused'}")  # fmt: skip

    runs = [work / "concurrent", work / "divergence"]
    evalwork = work / "evalcwd"
    evalwork.mkdir()
    codes = [
        _cli(*_eval_args(scenes, str(r / "checkpoints" / "last.ckpt")), cwd=evalwork).returncode for r in runs
    ]
    folders = sorted(p.name for p in (evalwork / "eval_out").iterdir())
    exact = codes == [0, 0] and len(folders) == 2 and "last" not in folders
    tally.add(
        "eval_last_ckpt",
        "exact" if exact else "failed",
        not exact,
        f"exit codes {codes}; result folders {folders}",
    )

    preset = work / "dup.yaml"
    preset.write_text(PRESET.read_text() + "optim:\n  lr_backbone: 2.0e-4\n")
    proc = _cli("train", "--config", str(preset), "--out", str(work / "dup"))
    refused = proc.returncode == 2 and "duplicate key `optim`" in proc.stderr
    tally.add("duplicate_yaml", "refused" if refused else "failed", False, _last_line(proc.stderr))

    out = work / "garbage"
    _train(out, scenes, steps, "run.stop_at_step=" + str(steps - 1))
    newest = out / "checkpoints" / f"step_{steps - 1:08d}.ckpt"
    checkpoint = torch.load(newest, map_location="cpu", weights_only=True)
    pos = checkpoint["student"]["pos_embed"]
    pos.copy_(torch.randn(pos.shape, generator=torch.Generator().manual_seed(0)))
    torch.save(checkpoint, newest)
    before = _newest_readable_step(out / "checkpoints")
    reference = _weights(_train(work / "reference", scenes, steps).last_checkpoint)
    exact = before == steps - 2 and _resume_and_compare(out, scenes, steps, reference)
    tally.add("garbage_finite", "exact" if exact else "failed", before != steps - 2,
              f"--resume auto fell back to step {before}; resumed run bit-exact: {exact}")  # fmt: skip

    out = work / "subset"
    proc = _cli(*_eval_args(scenes, "vit_tiny", "hummingbird"), "--random-init", "--memory-size", "2000",
                "--aug-epochs", "1", "--fraction", "1/2", "--out", str(out))  # fmt: skip
    warnings = json.loads((out / "hummingbird.json").read_text())["warnings"] if proc.returncode == 0 else []
    console = "no published list" in proc.stderr
    ok = console and any("no published list" in w for w in warnings)
    tally.add("random_subset", "refused" if ok else "failed", False,
              f"warned on the console: {console}, in the JSON warnings: {len(warnings)}: {warnings[:1]}")  # fmt: skip

    out = work / "images_changed"
    data = work / "images"
    shutil.copytree(scenes / "images", data)
    base = ["data.kind=folder", f"data.root={data}"]
    _train(out, scenes, steps, *base, "run.stop_at_step=1")
    images = sorted(data.rglob("*.jpg"))
    images[0].rename(images[0].with_name("renamed_" + images[0].name))
    images[-1].unlink()
    try:
        _train(out, scenes, steps, *base, resume="auto")
        outcome, message = "failed", "resumed on other images without a word"
    except ValueError as err:
        outcome, message = "refused", str(err)[:200]
    tally.add("changed_images", outcome, _newest_readable_step(out / "checkpoints") != 1, message)

    blocker = work / "a_file"
    blocker.write_text("x")
    began = time.time()
    proc = _cli(*_eval_args(scenes, "vit_tiny"), "--random-init", "--out", str(blocker / "out"))
    refused = (
        proc.returncode == 2
        and "cannot create the directory" in proc.stderr
        and "Traceback" not in proc.stderr
    )
    tally.add("unwritable_out", "refused" if refused else "failed", False,
              f"exit {proc.returncode} after {time.time() - began:.1f} s (before any feature): {_last_line(proc.stderr)}")  # fmt: skip

    shutil.rmtree(work, ignore_errors=True)
    return {
        "benchmark": "faults_issue26",
        "settings": {"steps": steps, "overrides": FAST},
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_end": list(os.getloadavg()),
            "torch": torch.__version__,
            "threads": 1,
        },  # fmt: skip
        "seconds": time.time() - started,
        "faults": list(tally.rows.values()),
    }


def table(results: dict[str, Any]) -> str:
    """The markdown table of `results`."""
    lines = ["| fault | trials | exact | refused | lost |", "|---|---:|---:|---:|---:|"]
    for row in results["faults"]:
        lines.append(
            f"| {row['fault']} | {row['trials']} | {row['exact']} | {row['refused']} | {row['lost']} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Run every fault and print the table; write the raw results as JSON with --out."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sigkill-trials", type=int, default=20)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps of every run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random kill points")
    parser.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    parser.add_argument("--issue26", action="store_true", help="run only the round-three faults (issue 26)")
    args = parser.parse_args()
    if args.steps < 3:
        parser.error("--steps must be >= 3")
    results = run_issue26(args) if args.issue26 else run(args)
    print(table(results))
    print(f"{results['seconds']:.0f} s, load average at the end {results['machine']['load_average_end']}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
