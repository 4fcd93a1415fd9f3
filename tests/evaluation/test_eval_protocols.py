"""The three protocols end to end on colour-coded toy data: oracle features ~100 mIoU, random ~chance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neco.evaluation.hummingbird import HummingbirdConfig, run_hummingbird
from neco.evaluation.linear import LinearConfig, LinearProbe, run_linear
from neco.evaluation.overcluster import OverclusterConfig, run_overcluster, standardise_pca
from neco.evaluation.toy import oracle_features, random_features, write_toy_dataset

PATCH = 2  # 64 px inputs -> 32 x 32 patch grid: fine enough that boundary patches cost little
NUM_CLASSES = 4


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    train = write_toy_dataset(root, "train", 12, num_classes=NUM_CLASSES, seed=0, size=(64, 72))
    val = write_toy_dataset(root, "val", 6, num_classes=NUM_CLASSES, seed=1, size=(72, 64))
    return train, val


def _oracle(images):
    return oracle_features(images, PATCH, NUM_CLASSES)


def _random(images):
    return random_features(images, PATCH)


def _hb_config(**kw):
    base = dict(input_size=64, memory_size=12 * 2 * 256, batch_size=4, device="cpu", search="faiss")
    return HummingbirdConfig(**{**base, **kw})


def test_hummingbird_oracle_near_100_random_near_chance(toy):
    train, val = toy
    oracle = run_hummingbird(_oracle, train, val, _hb_config(), patch_size=PATCH, progress=False)
    random = run_hummingbird(_random, train, val, _hb_config(), patch_size=PATCH, progress=False)
    assert oracle.result["metrics"]["miou"] > 90
    assert random.result["metrics"]["miou"] < 35
    settings = oracle.result["settings"]
    assert settings["ignore_in_memory"] == "excluded"
    assert settings["patches_per_image"] == 256 and settings["memory_rows_filled"] <= 12 * 2 * 256
    assert settings["k"] == 30 and settings["temperature"] == 0.02 and settings["search_backend"] == "faiss"
    assert oracle.examples.predictions.shape == (4, 64, 64)


def test_hummingbird_exact_backends_agree_and_ivf_runs(toy):
    train, val = toy
    a = run_hummingbird(
        _oracle,
        train,
        val,
        _hb_config(search="torch", augmentation_epochs=1),
        patch_size=PATCH,
        progress=False,
    )
    b = run_hummingbird(
        _oracle,
        train,
        val,
        _hb_config(search="faiss", augmentation_epochs=1),
        patch_size=PATCH,
        progress=False,
    )
    c = run_hummingbird(
        _oracle,
        train,
        val,
        _hb_config(search="ivf", nlist=4, nprobe=2, augmentation_epochs=1),
        patch_size=PATCH,
        progress=False,
    )
    assert a.result["metrics"]["miou"] == pytest.approx(b.result["metrics"]["miou"], abs=1e-6)
    assert c.result["settings"]["search_backend"] == "ivf" and c.result["metrics"]["miou"] > 80


def test_hummingbird_rejects_bad_options(toy):
    train, val = toy
    with pytest.raises(ValueError, match="`input_size` must be a multiple of the patch size"):
        run_hummingbird(_oracle, train, val, _hb_config(input_size=65), patch_size=PATCH, progress=False)
    with pytest.raises(ValueError, match="`search` must be one of"):
        run_hummingbird(_oracle, train, val, _hb_config(search="scann"), patch_size=PATCH, progress=False)


def _linear_config(**kw):
    base = dict(input_size=64, target_size=32, epochs=6, lr_step_epoch=5, batch_size=4, lr=0.5, device="cpu")
    return LinearConfig(**{**base, **kw})


def test_linear_oracle_near_100_random_near_chance(toy):
    train, val = toy
    oracle = run_linear(_oracle, train, val, _linear_config(), patch_size=PATCH, progress=False)
    random = run_linear(_random, train, val, _linear_config(), patch_size=PATCH, progress=False)
    assert oracle.result["metrics"]["miou"] > 90
    assert random.result["metrics"]["miou"] < 35
    assert oracle.result["settings"]["feature_cache"].startswith("cached")
    assert (
        oracle.result["metrics"]["num_pixels"] > 0.9 * len(val) * 32 * 32
    )  # the full val set, nothing dropped


def test_linear_without_cache_budget_recomputes_features(toy):
    train, val = toy
    out = run_linear(
        _oracle, train, val, _linear_config(cache_gb=1e-9, epochs=2), patch_size=PATCH, progress=False
    )
    assert out.result["settings"]["feature_cache"].startswith("none")
    assert np.isfinite(out.result["train_loss_per_epoch"]).all()


def test_conv_before_upsampling_equals_upsampling_before_conv():
    torch.manual_seed(0)
    probe = LinearProbe(6, 3, target_size=20)
    features = torch.randn(2, 6, 7, 5)
    upsampled = torch.nn.functional.interpolate(features, size=(20, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(probe(features), probe.conv(upsampled), atol=1e-5, rtol=1e-5)


def _oc_config(**kw):
    base = dict(input_size=64, target_size=64, pca_dim=4, ks=(0, 12), seeds=(0, 1), niter=20, nredo=2)
    return OverclusterConfig(**{**base, **kw})


def test_overcluster_oracle_near_100_random_near_chance(toy):
    _, val = toy

    def oracle(images):  # finer grid and no extra noise dimensions: standardisation would amplify them
        return oracle_features(images, 2, NUM_CLASSES, dim=NUM_CLASSES, noise=0.05)

    good = run_overcluster(oracle, val, _oc_config(), patch_size=2, progress=False)
    bad = run_overcluster(lambda x: random_features(x, 2), val, _oc_config(), patch_size=2, progress=False)
    assert set(good.result["metrics"]) == {"K=4 (#classes)", "K=12"}
    for key in good.result["metrics"]:
        assert good.result["metrics"][key]["miou_mean"] > 90
        assert bad.result["metrics"][key]["miou_mean"] < 35
        assert len(good.result["metrics"][key]["miou_per_seed"]) == 2
    assert good.result["metrics"]["K=4 (#classes)"]["matching"].startswith("hungarian")
    assert good.result["metrics"]["K=12"]["matching"].startswith("many-to-one")


def test_overcluster_caps_k_with_a_warning(toy):
    _, val = toy
    config = _oc_config(input_size=8, target_size=8, ks=(500,), seeds=(0,))
    out = run_overcluster(
        lambda x: oracle_features(x, 4, NUM_CLASSES), val, config, patch_size=4, progress=False
    )
    # 6 images x 2 x 2 patches = 24 points
    assert out.result["metrics"]["K=24"]["k"] == 24
    assert any("capped" in w for w in out.warnings)


def test_standardise_pca_matches_numpy_svd():
    rng = np.random.default_rng(0)
    tokens = (rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 5).astype(np.float16)
    projected, info = standardise_pca(tokens, 3, chunk=64)
    x = tokens.astype(np.float64)
    z = (x - x.mean(0)) / (x.std(0) + 1e-6)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    reference = z @ vt[:3].T
    for j in range(3):  # principal axes are defined up to sign
        sign = np.sign(np.dot(projected[:, j], reference[:, j]))
        np.testing.assert_allclose(sign * projected[:, j], reference[:, j], atol=1e-3)
    assert 0 < info["explained_variance"] <= 1
