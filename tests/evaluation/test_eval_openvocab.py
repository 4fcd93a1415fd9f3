"""`neco text-align` and `neco eval openvocab` end to end on tiny real-layout files, and their bad inputs."""

from __future__ import annotations

import json

import pytest
import torch

from neco.cli import main
from neco.data.captions import write_scene_captions
from neco.data.synthetic import write_scenes
from neco.evaluation.schema import validate_result

EVAL = ["--dataset", "scenes", "--backbone", "vit_tiny_scenes", "--input-size", "32", "--num-workers", "0"]
EVAL += ["--no-progress", "--batch-size", "4", "--num-figures", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def mapping(tmp_path_factory, run_text_align):
    """(scenes, caption root, last checkpoint) of a 4-step `neco text-align` run on the COCO layout."""
    root = tmp_path_factory.mktemp("openvocab")
    scenes = write_scenes(root / "scenes", num_train=8, num_val=4, size=32, progress=False)
    captions = write_scene_captions(scenes, root / "coco", "coco")
    rc = run_text_align(captions, root / "run", "--max-steps", "4", "--ckpt-every-steps", "2")
    assert rc == 0
    last = root / "run" / "checkpoints" / "last.ckpt"
    assert last.exists() and (root / "run" / "text_embeddings.pt").is_file()
    return scenes, captions, last


def test_eval_openvocab_writes_schema_json_and_labelled_figure(mapping, tmp_path, capsys):
    scenes, _, last = mapping
    out = tmp_path / "eval"
    rc = main(
        ["eval", "openvocab", "--data-root", str(scenes), "--mapping", str(last), "--out", str(out), *EVAL]
    )
    assert rc == 0, capsys.readouterr().err
    result = json.loads((out / "openvocab.json").read_text())
    validate_result(result)
    assert result["settings"]["background"] == "threshold"  # auto: the scenes have a background class
    assert result["settings"]["mapping_step"] == 4
    per_class = result["metrics"]["per_class_iou"]
    assert list(per_class)[0] == "background" and len(per_class) == 9
    assert 0 <= result["headline"]["value"] <= 100
    assert (out / "openvocab_predictions.png").is_file()
    rc = main(["eval", "openvocab", "--data-root", str(scenes), "--mapping", str(last), "--out", str(out)]
              + ["--background", "drop", "--templates", "simple", *EVAL])  # fmt: skip
    assert rc == 0
    dropped = json.loads((out / "openvocab.json").read_text())
    assert "background" not in dropped["metrics"]["per_class_iou"]
    assert dropped["settings"]["num_prompted_classes"] == 8


def test_eval_openvocab_bad_inputs(mapping, tmp_path, capsys):
    scenes, captions, last = mapping
    base = ["eval", "openvocab", "--data-root", str(scenes), "--out", str(tmp_path / "e"), *EVAL]
    assert main(base) == 2
    assert "`--mapping` is required" in capsys.readouterr().err
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"dots": "polka dots", "unicorn": "a unicorn"}))
    assert main([*base, "--mapping", str(last), "--class-names", str(names)]) == 2
    err = capsys.readouterr().err
    assert "unknown class names ['unicorn']" in err and "names.json" in err
    not_a_mapping = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}}, not_a_mapping)
    assert main([*base, "--mapping", str(not_a_mapping)]) == 2
    assert "not a `neco text-align` checkpoint" in capsys.readouterr().err
    assert main([*base, "--mapping", str(tmp_path / "none.ckpt")]) == 2
    assert "none.ckpt: file not found" in capsys.readouterr().err


def test_text_align_bad_inputs(mapping, tmp_path, capsys):
    _, captions, _ = mapping
    common = ["text-align", "--backbone", "vit_tiny_scenes", "--out", str(tmp_path / "r"), "--no-progress"]
    assert main([*common, "--data-root", str(tmp_path / "nowhere")]) == 2
    assert "missing caption file" in capsys.readouterr().err
    (captions / "train2017" / "extra.jpg").write_bytes(
        (captions / "train2017").glob("*.jpg").__next__().read_bytes()
    )
    folder_err = main([*common, "--data-root", str(captions / "train2017"), "--layout", "folder"])
    assert folder_err == 2
    assert "have no caption file" in capsys.readouterr().err
    (captions / "train2017" / "extra.jpg").unlink()
    offline = [*common, "--data-root", str(captions), "--no-text-download", "--text-model", "ViT-B-16"]
    assert main([*offline, "--text-weights", str(tmp_path / "clip.pt")]) == 2
    assert "clip.pt: file not found" in capsys.readouterr().err


def test_eval_openvocab_sliding_window_and_pamr(mapping, tmp_path, capsys):
    """One window over the whole image equals the single pass; PAMR and smaller windows change the maps."""
    scenes, _, last = mapping
    base = ["eval", "openvocab", "--data-root", str(scenes), "--mapping", str(last), *EVAL]
    base += ["--background", "drop", "--templates", "identity"]

    def run(name: str, *extra: str) -> dict:
        rc = main([*base, "--out", str(tmp_path / name), *extra])
        assert rc == 0, capsys.readouterr().err
        result = json.loads((tmp_path / name / "openvocab.json").read_text())
        validate_result(result)
        return result

    single = run("single")
    whole = run("whole", "--slide-window", "32", "--slide-short-side", "32")
    assert whole["settings"]["inference"] == {"slide_window": 32, "stride": 16, "short_side": 32}
    assert single["settings"]["inference"] == {"single_pass": 32} and single["settings"]["pamr"] is None
    assert whole["metrics"]["per_class_iou"] == pytest.approx(single["metrics"]["per_class_iou"], abs=1e-6)
    slid = run("slid", "--slide-window", "28", "--slide-stride", "14", "--slide-short-side", "42")
    refined = run("pamr", "--pamr", "--pamr-iterations", "3", "--pamr-dilations", "1", "2")
    assert refined["settings"]["pamr"] == {"iterations": 3, "dilations": [1, 2]}
    for other in (slid, refined):
        assert other["metrics"]["per_class_iou"] != single["metrics"]["per_class_iou"]
        assert (tmp_path / "slid" / "openvocab_predictions.png").is_file()
    assert main([*base, "--out", str(tmp_path / "bad"), "--slide-window", "16", "--slide-stride", "20"]) == 2
    assert "`--slide-stride` (20) must not exceed `--slide-window` (16)" in capsys.readouterr().err


def test_openvocab_prompts_whatever_class_names_the_dataset_has(mapping, tmp_path):
    """Class names come from the dataset object (e.g. a 171-class COCO-Stuff loader): no name list in the protocol."""
    from neco import backbones
    from neco.data import build_segmentation_dataset
    from neco.data.base import SegmentationDataset
    from neco.evaluation import Features, evaluate
    from neco.evaluation.protocol import EvalData
    from neco.evaluation.protocols.openvocab import OpenVocabSettings

    scenes, _, last = mapping
    val = build_segmentation_dataset("scenes", scenes, "val")
    names = ["sky", "wall-concrete", "grass", "tvmonitor", "playingfield", "dirt", "sea", "tree", "road"]
    renamed = SegmentationDataset(val.pairs, name="renamed", split="val", class_names=names)
    model = backbones.create("vit_tiny_scenes", pretrained=True)
    run = evaluate(
        "openvocab",
        Features.of_model(model),
        EvalData(val=renamed, name="renamed"),
        OpenVocabSettings(mapping=str(last), templates="simple"),
        input_size=32,
        progress=False,
        num_workers=0,
        out_dir=tmp_path,
    )
    assert run.result["settings"]["background"] == "none"  # auto: class 0 is not a background class
    assert run.result["settings"]["num_prompted_classes"] == len(names)
    assert list(run.result["metrics"]["per_class_iou"]) == names
