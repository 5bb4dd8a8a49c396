"""Qwen2, CosyVoice 2's LM backbone, against transformers' Qwen2Model with random weights
(tests/data/make_qwen2_reference.py), and its cached decoding against the full forward pass."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.cosyvoice import qwen2


@pytest.fixture(scope="module")
def reference():
    from conftest import ROOT

    with np.load(ROOT / "tests" / "data" / "qwen2_reference.npz") as f:
        data = {k: f[k] for k in f.files}
    cfg = qwen2.Qwen2Config(**json.loads(str(data["config"])))
    state_dict = {k[3:]: v for k, v in data.items() if k.startswith("sd/")}
    return cfg, qwen2.from_torch(state_dict, cfg), state_dict, data


def positions_of(mask):
    return np.broadcast_to(np.arange(mask.shape[1]), mask.shape)


def test_hidden_states_equal_transformers(reference):
    cfg, variables, _, data = reference
    mask = data["attention_mask"] > 0
    hidden = jax.jit(qwen2.Qwen2Model(cfg).apply)(variables, data["embeddings"], positions_of(mask), mask)
    expected = data["hidden"]
    for row, n in enumerate(mask.sum(1)):  # each row's real tokens
        np.testing.assert_allclose(hidden[row, :n], expected[row, :n], rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_cached_decoding_equals_the_full_pass(reference):
    cfg, variables, _, data = reference
    x = data["embeddings"][:1]
    valid = np.ones(x.shape[:2], bool)
    full = qwen2.Qwen2Model(cfg).apply(variables, x, positions_of(valid), valid)
    model = qwen2.Qwen2Model(cfg)
    cache = qwen2.empty_cache(model, 1, x.shape[1])
    out, state = model.apply(
        {**variables, "cache": cache}, x[:, :6], positions_of(valid)[:, :6], valid[:, :6], True, mutable=["cache"]
    )
    steps = [out]
    for i in range(6, x.shape[1]):
        out, state = model.apply(
            {**variables, **state}, x[:, i : i + 1], np.array([[i]]), valid[:, i : i + 1], True, mutable=["cache"]
        )
        steps.append(out)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, rtol=1e-5, atol=1e-5)


def test_published_size_and_errors(reference):
    cfg, _, state_dict, _ = reference
    assert qwen2.param_count(qwen2.config("qwen2_0.5b")) == 494_032_768
    missing = {k: v for k, v in state_dict.items() if k != "layers.1.mlp.up_proj.weight"}
    with pytest.raises(ValueError, match=r"layers.\*.mlp_up_proj.weight: layers \[0, 2\], the model has 3"):
        qwen2.from_torch(missing, cfg)
    with pytest.raises(ValueError, match="shape mismatches: embed_tokens.weight"):
        qwen2.from_torch(state_dict, qwen2.Qwen2Config(**{**cfg.__dict__, "vocab_size": 98}))
