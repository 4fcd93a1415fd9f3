"""Backbone checksums and JSON conversion of results."""

from __future__ import annotations

import json

import numpy as np
import torch

from neco.evaluation.results import jsonable, state_dict_checksum, write_result


def test_checksum_is_stable_and_sensitive_to_one_value():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    copy = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    copy.load_state_dict(model.state_dict())
    assert state_dict_checksum(model) == state_dict_checksum(copy) == state_dict_checksum(model.state_dict())
    with torch.no_grad():
        copy[0].weight[0, 0] += 1e-6
    assert state_dict_checksum(model) != state_dict_checksum(copy)
    # same values under another name are another model
    renamed = {f"x.{k}": v for k, v in model.state_dict().items()}
    assert state_dict_checksum(renamed) != state_dict_checksum(model)


def test_results_are_plain_json(tmp_path):
    path = write_result(
        tmp_path / "r.json",
        {
            "a": np.float32(1.5),
            "b": torch.tensor([1, 2]),
            "c": float("nan"),
            "d": (1, np.int64(2)),
            "e": np.arange(2),
        },
    )
    data = json.loads(path.read_text())
    assert (
        data["a"] == 1.5
        and data["b"] == [1, 2]
        and data["c"] is None
        and data["d"] == [1, 2]
        and data["e"] == [0, 1]
    )
    assert "neco_version" in data and "written_at" in data
    assert jsonable({"x": [np.nan]}) == {"x": [None]}
