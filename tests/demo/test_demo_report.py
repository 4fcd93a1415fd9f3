"""The demo report renders every evaluation row, figure and the before/after numbers it is given."""

from __future__ import annotations

from neco.demo.report import render_html, render_markdown, summary_lines, write_reports


def _results() -> dict:
    return {
        "settings": {"num_train": 10, "num_val": 4, "image_size": 64, "num_classes": 9, "eval_seeds": [0, 1, 2]},
        "backbone": {"name": "vit_tiny_scenes", "description": "tiny"},
        "evaluations": {
            "hummingbird": {"before": {"miou_mean": 40.0, "miou_std": 1.0}, "after": {"miou_mean": 46.5, "miou_std": 2.0}},
            "linear": {"before": {"miou_mean": 50.0, "miou_std": 0.0}, "after": {"miou_mean": 49.0, "miou_std": 0.0}},
        },
        "training": {"steps": 7, "seconds": 12.0, "images_per_s": 3.5},
        "figures": {"pca": "pca.png"},
        "figure_captions": {"pca": "PCA maps"},
        "notes": ["a note <with> markup"],
    }


def test_markdown_has_rows_gain_and_figures():
    text = render_markdown(_results())
    assert "| Hummingbird dense NN retrieval | 40.0 ± 1.0 | 46.5 ± 2.0 | +6.5 | +3.2x |" in text
    assert "| Linear segmentation | 50.0 ± 0.0 | 49.0 ± 0.0 | -1.0 | n/a |" in text
    assert "![pca](pca.png)" in text
    assert "7 steps" in text


def test_html_escapes_and_links_figures(tmp_path):
    page = render_html(_results())
    assert '<img src="pca.png"' in page
    assert "a note &lt;with&gt; markup" in page
    md, html = write_reports(_results(), tmp_path)
    assert md.read_text().startswith("# neco demo report")
    assert html.read_text().startswith("<!doctype html>")


def test_summary_lines_one_per_evaluation():
    lines = summary_lines(_results())
    assert len(lines) == 3
    assert "+6.5" in lines[1] and "-1.0" in lines[2]
