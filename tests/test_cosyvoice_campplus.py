"""CAM++, CosyVoice's speaker embedder, against 3D-Speaker's module with random weights
(tests/data/make_campplus_reference.py): the frontend's features and the x-vectors of a padded
batch, each utterance as upstream computes it alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.cosyvoice import campplus
from jaxmodels.nn.variants import param_count

NARROW = {"growth_rate": 8, "bn_size": 2, "init_channels": 32}


@pytest.fixture(scope="module")
def reference():
    from conftest import ROOT

    with np.load(ROOT / "tests" / "data" / "campplus_reference.npz") as f:
        data = {k: f[k] for k in f.files}
    state_dict = {k[3:]: v for k, v in data.items() if k.startswith("sd/")}
    cfg = campplus.config("campplus_192", **NARROW)
    return campplus.CAMPPlus(cfg), campplus.from_torch(state_dict, cfg), data


def rel_err(a, b):
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


def test_published_parameter_count(reference):
    _, _, data = reference
    model = campplus.CAMPPlus(campplus.config("campplus_192"))
    assert param_count(model, jnp.zeros((1, 20, 80)), jnp.array([20])) == int(data["count_192"]) == 6_848_544


def test_features_equal_cosyvoices_frontend(reference):
    _, _, data = reference
    feats, frames = jax.jit(campplus.features)(data["wav"], data["lengths"])
    for i, n in enumerate(np.asarray(frames)):
        expected = data[f"feats/{i}"]
        assert n == len(expected)
        np.testing.assert_allclose(feats[i, :n], expected, atol=5e-4)  # log energies: float32 FFTs
        assert not np.any(np.asarray(feats[i, n:]))


def test_embeddings_of_a_padded_batch_equal_each_utterance_alone(reference):
    model, variables, data = reference
    n = max(len(data[f"feats/{i}"]) for i in range(2))
    feats = np.stack([np.pad(data[f"feats/{i}"], ((0, n - len(data[f"feats/{i}"])), (0, 0))) for i in range(2)])
    frames = np.array([len(data[f"feats/{i}"]) for i in range(2)])
    out = jax.jit(model.apply)(variables, feats, frames)
    for i in range(2):
        assert rel_err(out[i], data[f"embedding/{i}"]) < 1e-4
    end_to_end = jax.jit(lambda w, n: campplus.embed(model, variables, w, n))(data["wav"], data["lengths"])
    for i in range(2):
        assert rel_err(end_to_end[i], data[f"embedding/{i}"]) < 1e-3  # the fbank's float32 differences


def test_a_wrong_checkpoint_is_named(reference):
    _, variables, data = reference
    state_dict = {k[3:]: v for k, v in data.items() if k.startswith("sd/")}
    with pytest.raises(ValueError, match="shape mismatches: head.conv1.weight"):
        campplus.from_torch(state_dict, campplus.config("campplus_192", **NARROW, m_channels=16))
    del state_dict["xvector.dense.linear.weight"]
    with pytest.raises(ValueError, match="missing parameters: params/xvector_dense_linear/kernel"):
        campplus.from_torch(state_dict, campplus.config("campplus_192", **NARROW))
