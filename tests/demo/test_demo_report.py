"""The demo report renders every evaluation row, figure and the before/after numbers it is given."""

from __future__ import annotations

import pytest

from neco.demo.report import headline, render_html, render_markdown, summary_lines, write_reports


def _results() -> dict:
    return {
        "settings": {
            "num_train": 10,
            "num_val": 4,
            "image_size": 64,
            "num_classes": 9,
            "eval_seeds": [0, 1, 2],
        },
        "backbone": {"name": "vit_tiny_scenes", "description": "tiny"},
        "evaluations": {
            "hummingbird": {
                "before": {"miou_mean": 40.0, "miou_std": 1.0},
                "after": {"miou_mean": 46.5, "miou_std": 2.0},
            },
            "linear": {
                "before": {"miou_mean": 50.0, "miou_std": 0.0},
                "after": {"miou_mean": 49.0, "miou_std": 0.0},
            },
        },
        "training": {"steps": 7, "seconds": 12.0, "images_per_s": 3.5},
        "figures": {"pca": "pca.png"},
        "figure_captions": {"pca": "PCA maps"},
        "notes": ["a note <with> markup"],
    }


def test_markdown_has_rows_gain_and_figures():
    text = render_markdown(_results())
    assert "| Hummingbird dense NN retrieval | 40.0 ± 1.0 | 46.5 ± 2.0 | +6.5 | +3.2x |" in text
    assert "| Linear segmentation | 50.0 ± 0.0 | 49.0 ± 0.0 | -1.0 | spread ~0 |" in text
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
    assert len(lines) == 4 and lines[0] == headline(_results())
    assert "+6.5" in lines[2] and "-1.0" in lines[3]


def test_report_leads_with_the_answer():
    results = _results()
    assert (
        headline(results)
        == "NeCo improved Hummingbird retrieval by 6.5 mIoU, 3.2 times the evaluation spread."
    )
    results["evaluations"]["hummingbird"]["before"]["miou_per_seed"] = [39.0, 40.0, 41.0]
    results["evaluations"]["hummingbird"]["after"]["miou_per_seed"] = [45.0, 47.0, 47.5]
    results["evaluations"]["hummingbird"]["control"] = {"miou_mean": 40.25, "miou_std": 1.0}
    sentence = headline(results)
    assert sentence.startswith(
        "NeCo improved Hummingbird retrieval by 6.5 ± 0.4 mIoU, 3.2 times"
    )  # paired 6, 7, 6.5
    assert sentence.endswith("the control without the NeCo loss changed it by +0.2.")
    text = render_markdown(results)
    assert text.index(sentence) < text.index("| evaluation |")  # first, above the table
    assert sentence in render_html(results)
    flat = _results()
    flat["evaluations"]["hummingbird"]["before"]["miou_std"] = 0.0
    flat["evaluations"]["hummingbird"]["after"]["miou_std"] = 0.01
    assert "spread ~0" in headline(flat) and "times" not in headline(flat)
    assert headline({"evaluations": {}}) is None
    with pytest.raises(KeyError):
        headline({"evaluations": {"hummingbird": {"before": {}}}})
