"""Backbone checksums and JSON conversion of results."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neco.backbones.loading import state_dict_checksum
from neco.evaluation.schema import jsonable, write_result


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


def test_results_are_plain_json():
    data = jsonable(
        {
            "a": np.float32(1.5),
            "b": torch.tensor([1, 2]),
            "c": float("nan"),
            "d": (1, np.int64(2)),
            "e": np.arange(2),
        }
    )
    json.dumps(data)  # plain types only
    assert data == {"a": 1.5, "b": [1, 2], "c": None, "d": [1, 2], "e": [0, 1]}
    assert jsonable({"x": [np.nan]}) == {"x": [None]}


def test_write_result_refuses_a_result_outside_the_schema(tmp_path):
    with pytest.raises(ValueError, match="'schema_version' is a required property"):
        write_result(tmp_path / "r.json", {"a": 1})
    assert not (tmp_path / "r.json").exists()
