"""The three protocols end to end on colour-coded toy data: oracle features ~100 mIoU, random ~chance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy import oracle_features, random_features, run_protocol, write_toy_dataset

from neco.evaluation.blocks.clustering import standardise_pca
from neco.evaluation.protocols.hummingbird import HummingbirdSettings
from neco.evaluation.protocols.linear import LinearProbe, LinearSettings
from neco.evaluation.protocols.overcluster import OverclusterSettings

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


def _hummingbird(fn, toy, input_size=64, **kw):
    train, val = toy
    settings = HummingbirdSettings(**{"memory_size": 12 * 2 * 256, "search": "faiss", **kw})
    return run_protocol("hummingbird", fn, PATCH, val, train, settings, input_size=input_size, batch_size=4)


def test_hummingbird_oracle_near_100_random_near_chance(toy):
    oracle = _hummingbird(_oracle, toy)
    random = _hummingbird(_random, toy)
    assert oracle.result["metrics"]["miou"] > 90
    assert random.result["metrics"]["miou"] < 35
    settings = oracle.result["settings"]
    assert settings["ignore_in_memory"] == "excluded"
    assert settings["patches_per_image"] == 256 and settings["memory_rows_filled"] <= 12 * 2 * 256
    assert settings["k"] == 30 and settings["temperature"] == 0.02 and settings["search_backend"] == "faiss"
    assert settings["matching"] == "hungarian" and settings["miou_average"] == "all"
    assert oracle.examples.predictions.shape == (4, 64, 64)


def test_hummingbird_exact_backends_agree_and_ivf_runs(toy):
    a = _hummingbird(_oracle, toy, search="torch", augmentation_epochs=1)
    b = _hummingbird(_oracle, toy, search="faiss", augmentation_epochs=1)
    c = _hummingbird(_oracle, toy, search="ivf", nlist=4, nprobe=2, augmentation_epochs=1)
    assert a.result["metrics"]["miou"] == pytest.approx(b.result["metrics"]["miou"], abs=1e-6)
    assert c.result["settings"]["search_backend"] == "ivf" and c.result["metrics"]["miou"] > 80


def test_hummingbird_rejects_bad_options(toy):
    with pytest.raises(ValueError, match="`--input-size` must be a multiple of the patch size"):
        _hummingbird(_oracle, toy, input_size=65)
    with pytest.raises(ValueError, match="`--search` must be one of"):
        _hummingbird(_oracle, toy, search="scann")
    with pytest.raises(ValueError, match="a fraction must look like 1/128"):
        _hummingbird(_oracle, toy, fraction="half")


def _linear(fn, toy, **kw):
    train, val = toy
    base = dict(
        target_size=32, epochs=6, lr_step_epoch=5, probe_batch_size=4, lr=0.5, train_features="cached"
    )
    return run_protocol(
        "linear", fn, PATCH, val, train, LinearSettings(**{**base, **kw}), input_size=64, batch_size=4
    )


def test_linear_oracle_near_100_random_near_chance(toy):
    oracle = _linear(_oracle, toy)
    random = _linear(_random, toy)
    assert oracle.result["metrics"]["miou"] > 90
    assert random.result["metrics"]["miou"] < 35
    assert oracle.result["settings"]["feature_cache"] == "fp16"
    assert (
        oracle.result["metrics"]["num_pixels"] > 0.9 * len(toy[1]) * 32 * 32
    )  # the full val set, nothing dropped


def test_linear_published_default_trains_on_augmented_crops(toy):
    assert LinearSettings().train_features == "augmented"
    out = _linear(_oracle, toy, train_features="augmented", epochs=4, lr_step_epoch=3)
    assert out.result["settings"]["feature_cache"] is None
    assert out.result["settings"]["train_augmentation"]["random_resized_crop"]["scale"] == [0.8, 1.0]
    assert out.result["metrics"]["miou"] > 80


def test_linear_without_cache_budget_recomputes_features(toy):
    out = _linear(_oracle, toy, cache_gb=1e-9, epochs=2)
    assert out.result["settings"]["feature_cache"] is None
    assert any("--cache-gb" in w for w in out.result["warnings"])
    assert np.isfinite(out.result["metrics"]["train_loss_per_epoch"]).all()


def test_conv_before_upsampling_equals_upsampling_before_conv():
    torch.manual_seed(0)
    probe = LinearProbe(6, 3, target_size=20)
    features = torch.randn(2, 6, 7, 5)
    upsampled = torch.nn.functional.interpolate(features, size=(20, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(probe(features), probe.conv(upsampled), atol=1e-5, rtol=1e-5)


def _overcluster(fn, val, patch=2, input_size=64, target_size=64, **kw):
    base = dict(target_size=target_size, pca_dim=4, ks=(0, 12), num_seeds=2, niter=20, nredo=2)
    return run_protocol(
        "overcluster", fn, patch, val, None, OverclusterSettings(**{**base, **kw}), input_size=input_size
    )


def test_overcluster_oracle_near_100_random_near_chance(toy):
    _, val = toy

    def oracle(images):  # finer grid and no extra noise dimensions: standardisation would amplify them
        return oracle_features(images, 2, NUM_CLASSES, dim=NUM_CLASSES, noise=0.05)

    good = _overcluster(oracle, val)
    bad = _overcluster(lambda x: random_features(x, 2), val)
    assert set(good.result["metrics"]) == {"K=4", "K=12"}
    for key in good.result["metrics"]:
        assert good.result["metrics"][key]["miou_mean"] > 90
        assert bad.result["metrics"][key]["miou_mean"] < 35
        assert len(good.result["metrics"][key]["miou_per_seed"]) == 2
    assert good.result["metrics"]["K=4"]["matching"] == "hungarian"
    assert good.result["metrics"]["K=12"]["matching"] == "many_to_one"
    assert good.result["headline"]["name"] == "K=12 miou_mean"


def test_overcluster_caps_k_with_a_warning(toy):
    _, val = toy
    out = _overcluster(
        lambda x: oracle_features(x, 4, NUM_CLASSES),
        val,
        patch=4,
        input_size=8,
        target_size=8,
        ks=(500,),
        num_seeds=1,
    )
    # 6 images x 2 x 2 patches = 24 points
    assert out.result["metrics"]["K=24"]["k"] == 24
    assert any("capped" in w for w in out.result["warnings"])


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


def test_linear_cached_epochs_show_progress(toy, capsys):
    train, val = toy
    settings = LinearSettings(
        target_size=32, epochs=2, lr_step_epoch=1, probe_batch_size=4, lr=0.5, train_features="cached"
    )
    run_protocol("linear", _oracle, PATCH, val, train, settings, input_size=64, batch_size=4, progress=True)
    assert "linear probe epochs" in capsys.readouterr().err
