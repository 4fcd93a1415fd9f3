"""The attention-validation callback runs inside a Lightning fit and logs the teacher's attention Jaccard."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers.logger import Logger

from neco.backbones import create
from neco.data.synthetic import write_scenes
from neco.training.attention_callback import AttentionValidation, AttentionValidationConfig


class _Capture(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[int, dict]] = []

    @property
    def name(self) -> str:
        return "capture"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.logged.append((step, dict(metrics)))


class _Tiny(L.LightningModule):
    def __init__(self, name: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.teacher = create(name).eval()
        self.weight = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch, batch_idx):
        return (self.weight * batch[0]).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD([self.weight], lr=0.1)


def test_attention_callback_logs_on_schedule(tmp_path):
    root = write_scenes(tmp_path / "scenes", 2, 3, 64, 0, progress=False)
    callback = AttentionValidation(
        AttentionValidationConfig(
            root=str(root), dataset="scenes", every_steps=2, max_images=2, input_size=64
        )
    )
    logger = _Capture()
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=logger,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(3, 1)), batch_size=1)
    trainer.fit(_Tiny("vit_tiny_reg"), data)  # registers must be handled
    assert [step for step, _ in callback.history] == [2]
    logged = [m for _, m in logger.logged if "val/attention_jaccard" in m]
    assert len(logged) == 1
    assert 0.0 <= logged[0]["val/attention_jaccard"] <= 100.0


def test_attention_callback_config_rejects_bad_values():
    from neco.training.config import RunConfig, TrainConfig, config_from_dict

    def config(**values):  # the section as the training config validates it (file, overrides, code)
        return config_from_dict({"run": {"attention_validation": values}})

    with pytest.raises(ValueError, match="`run.attention_validation.dataset` must be one of"):
        config(root="x", dataset="ade20k")
    with pytest.raises(ValueError, match=r"`run.attention_validation.every_steps` must be >= 1"):
        config(root="x", every_steps=0)
    with pytest.raises(ValueError, match=r"`run.attention_validation.root` must be a VOC-format folder"):
        config(enabled=True)
    with pytest.raises(ValueError, match=r"`run.attention_validation.root` must be a VOC-format folder"):
        TrainConfig(run=RunConfig(attention_validation=AttentionValidationConfig(enabled=True)))


def test_neco_train_runs_the_attention_validation_of_its_config(tmp_path, capsys):
    """`run.attention_validation.enabled=true` on the `neco train` line attaches the callback: its
    Jaccard lands in the run's metrics.csv and the setting in the saved config.yaml."""
    import csv

    import yaml
    from tiny_runs import FAST, PRESET

    from neco.cli import main

    root = write_scenes(tmp_path / "scenes", 8, 2, 48, 0, progress=False)
    out = tmp_path / "run"
    keys = [
        "enabled=true",
        f"root={root}",
        "dataset=scenes",
        "every_steps=2",
        "max_images=2",
        "input_size=32",
    ]
    argv = [
        "train",
        "--config",
        str(PRESET),
        "--out",
        str(out),
        "--max-steps",
        "2",
        *FAST,
        f"data.root={tmp_path / 'train'}",
    ]
    assert main([*argv, *(f"run.attention_validation.{k}" for k in keys)]) == 0, capsys.readouterr().err
    (metrics,) = (out / "csv").glob("version_*/metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("val/attention_jaccard")]
    assert len(rows) == 1 and 0.0 <= float(rows[0]["val/attention_jaccard"]) <= 100.0
    saved = yaml.safe_load((out / "config.yaml").read_text())["run"]["attention_validation"]
    assert saved["enabled"] is True and saved["every_steps"] == 2
