"""Render the demo's `results.json` as `report.md` and `report.html` (figures referenced by relative path)."""

from __future__ import annotations

import html
import math
import statistics
from pathlib import Path
from typing import Any

from neco.utils.io import atomic_write

__all__ = ["render_markdown", "render_html", "write_reports", "summary_lines", "headline"]

# Below this std (mIoU points) over evaluation seeds a gain / spread ratio only says "divided by ~0".
_SPREAD_FLOOR = 0.05

_TITLES = {
    "hummingbird": "Hummingbird dense NN retrieval",
    "linear": "Linear segmentation",
    "overcluster": "Overclustering",
}


def _fmt(mean: float, std: float) -> str:
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{mean:.1f} ± {std:.1f}"


def _rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for key, ev in results.get("evaluations", {}).items():
        before, after = ev["before"], ev["after"]
        gain = after["miou_mean"] - before["miou_mean"]
        spread = max(before["miou_std"], after["miou_std"])
        rows.append(
            (
                _TITLES.get(key, key) + (f" ({ev['setting']})" if ev.get("setting") else ""),
                _fmt(before["miou_mean"], before["miou_std"]),
                _fmt(after["miou_mean"], after["miou_std"]),
                f"{gain:+.1f}",
                f"{gain / spread:+.1f}x" if spread > _SPREAD_FLOOR else "spread ~0",
            )
        )
    return rows


def headline(results: dict[str, Any]) -> str | None:
    """The answer in one sentence: the Hummingbird gain, its ratio to the evaluation spread, the control's change."""
    ev = results.get("evaluations", {}).get("hummingbird")
    if not ev:
        return None
    before, after = ev["before"], ev["after"]
    gain = after["miou_mean"] - before["miou_mean"]
    paired = [a - b for a, b in zip(after.get("miou_per_seed", []), before.get("miou_per_seed", []))]
    # ± is the std of the paired (same evaluation seed) differences, the spread of the gain itself.
    pm = f" ± {statistics.pstdev(paired):.1f}" if len(paired) > 1 else ""
    spread = max(before["miou_std"], after["miou_std"])
    ratio = f"{abs(gain) / spread:.1f} times the evaluation spread" if spread > _SPREAD_FLOOR else "spread ~0"
    verb = "improved" if gain >= 0.05 else "lowered" if gain <= -0.05 else "changed"
    text = f"NeCo {verb} Hummingbird retrieval by {abs(gain):.1f}{pm} mIoU, {ratio}"
    control = ev.get("control")
    if control:  # only when a control without the NeCo loss ran
        text += f"; the control without the NeCo loss changed it by {control['miou_mean'] - before['miou_mean']:+.1f}"
    return text + "."


def summary_lines(results: dict[str, Any]) -> list[str]:
    """Terminal summary: one line per evaluation with before, after and gain."""
    lead = headline(results)
    lines = [lead] if lead else []
    lines.append(f"{'evaluation':<44} {'before':>13} {'after':>13} {'gain':>7}")
    for name, before, after, gain, _ in _rows(results):
        lines.append(f"{name:<44} {before:>13} {after:>13} {gain:>7}")
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    """The report as Markdown."""
    s = results["settings"]
    t = results.get("training", {})
    lead = headline(results)
    out = [
        "# neco demo report",
        "",
        *([f"**{lead}**", ""] if lead else []),
        f"Backbone: `{results['backbone']['name']}` ({results['backbone'].get('description', '')}); "
        f"post-trained with NeCo for {t.get('steps', 0)} steps ({t.get('seconds', 0):.0f} s, "
        f"{t.get('images_per_s', 0):.1f} images/s) on {s.get('device', 'cpu')}.",
        "",
        f"Data: synthetic scenes ({s.get('num_train')} train / {s.get('num_val')} val images, "
        f"{s.get('image_size')} px, {s.get('num_classes')} classes defined by texture, not colour). "
        f"mIoU in %, mean ± std over {len(s.get('eval_seeds', []))} evaluation seeds "
        f"({', '.join(str(x) for x in s.get('eval_seeds', []))}).",
        "",
        "| evaluation | before | after | gain | gain / spread |",
        "|---|---|---|---|---|",
    ]
    out += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in _rows(results)]
    figures = results.get("figures", {})
    captions = results.get("figure_captions", {})
    if results.get("explore"):
        link = results["explore"]
        out += ["", f"Interactive nearest patches, start vs NeCo: [{link}]({link})"]
    if figures:
        out += ["", "## Figures", ""]
        for key, path in figures.items():
            out += [f"**{captions.get(key, key)}**", "", f"![{key}]({path})", ""]
    if results.get("notes"):
        out += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    out += ["## Settings", "", "```", *[f"{k}: {v}" for k, v in s.items()], "```", ""]
    return "\n".join(out)


def render_html(results: dict[str, Any]) -> str:
    """The report as a standalone HTML page."""
    e = html.escape
    s = results["settings"]
    t = results.get("training", {})
    rows = "\n".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in _rows(results))
    figs = []
    captions = results.get("figure_captions", {})
    for key, path in results.get("figures", {}).items():
        figs.append(
            f'<figure><img src="{e(path)}" alt="{e(key)}"><figcaption>{e(captions.get(key, key))}</figcaption></figure>'
        )
    notes = "".join(f"<li>{e(n)}</li>" for n in results.get("notes", []))
    settings = "".join(f"<tr><td>{e(str(k))}</td><td>{e(str(v))}</td></tr>" for k, v in s.items())
    answer = headline(results)
    lead = f"<p><strong>{e(answer)}</strong></p>" if answer else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>neco demo report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; image-rendering: pixelated; }}
figcaption {{ color: #555; font-size: 0.9em; }}
</style></head><body>
<h1>neco demo report</h1>
{lead}
<p>Backbone <code>{e(results["backbone"]["name"])}</code> ({e(results["backbone"].get("description", ""))}),
post-trained with NeCo for {t.get("steps", 0)} steps ({t.get("seconds", 0):.0f} s,
{t.get("images_per_s", 0):.1f} images/s) on {e(str(s.get("device", "cpu")))}.
mIoU in %, mean ± std over {len(s.get("eval_seeds", []))} evaluation seeds.</p>
<table><tr><th>evaluation</th><th>before</th><th>after</th><th>gain</th><th>gain / spread</th></tr>
{rows}
</table>
{f'<p>Interactive nearest patches, start vs NeCo: <a href="{e(results["explore"])}">{e(results["explore"])}</a></p>' if results.get("explore") else ""}
{"".join(figs)}
{"<h2>Notes</h2><ul>" + notes + "</ul>" if notes else ""}
<h2>Settings</h2><table>{settings}</table>
</body></html>
"""


def write_reports(results: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write `report.md` and `report.html` into `out_dir`, atomically."""
    out_dir = Path(out_dir)
    md = atomic_write(out_dir / "report.md", lambda h: h.write(render_markdown(results)), mode="w")
    page = atomic_write(out_dir / "report.html", lambda h: h.write(render_html(results)), mode="w")
    return md, page
