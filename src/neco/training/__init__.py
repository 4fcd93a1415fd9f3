"""NeCo training: typed config, LightningModule + DataModule, checkpoints, the `train` runner.

The only package of neco that imports Lightning. Entry points: `neco.training.config.load_config`
and `neco.training.run.train` (used by `neco train`).
"""
