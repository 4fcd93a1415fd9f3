"""The embedded-default demo: tiny image-level pretraining, before/after evaluation, NeCo post-training, report."""
