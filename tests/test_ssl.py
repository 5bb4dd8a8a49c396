"""wav2vec 2.0 and HuBERT encoders against transformers (tests/data/make_ssl_reference.py)."""

import json

import jax
import numpy as np
import pytest
from conftest import ROOT

from jaxmodels import ssl


@pytest.fixture(scope="module")
def reference():
    with np.load(ROOT / "tests" / "data" / "ssl_reference.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("case", ["hubert_base_layout", "wav2vec2_large_layout"])
def test_every_hidden_state_equals_transformers_on_a_padded_batch(reference, case):
    ref = reference
    config = json.loads(str(ref[f"{case}/config"]))
    state_dict = {k.split("/sd/")[1]: v for k, v in ref.items() if k.startswith(f"{case}/sd/")}
    model, variables = ssl.from_transformers(state_dict, config)
    paddings = 1.0 - ref["attention_mask"].astype(np.float32)
    hidden = jax.jit(lambda v, x, p: model.apply(v, x, p, method="hidden_states"))(variables, ref["audio"], paddings)
    expected = [ref[f"{case}/hidden_{i}"] for i in range(config["num_hidden_layers"] + 1)]
    assert len(hidden) == len(expected)
    frames = ssl.output_lengths(np.array([1600, 1203]), config["conv_kernel"], config["conv_stride"])
    for i, (ours, theirs) in enumerate(zip(hidden, expected)):
        assert ours.shape == theirs.shape
        for row, n in enumerate(frames):  # the valid frames of the full and the padded utterance
            scale = np.abs(theirs[row, :n]).max()
            np.testing.assert_allclose(ours[row, :n], theirs[row, :n], rtol=1e-4, atol=1e-4 * scale, err_msg=f"{i}")
    last = model.apply(variables, ref["audio"], paddings)
    np.testing.assert_allclose(last[1, : frames[1]], ref[f"{case}/last"][1, : frames[1]], rtol=1e-4, atol=1e-4)
    half = model.clone(dtype=jax.numpy.bfloat16).apply(variables, ref["audio"], paddings)
    assert np.abs(np.float32(half[0]) - ref[f"{case}/last"][0]).max() < 0.1 * np.abs(ref[f"{case}/last"][0]).max()


def test_named_configs_have_transformers_parameter_counts(reference):
    counts = json.loads(str(reference["param_counts"]))
    assert counts["hubert_base"] == 94_371_712 and counts["hubert_xlarge"] == 962_497_408
    for name in ssl.VARIANTS:
        assert ssl.param_count(ssl.create(name)) == counts[name], name


def test_a_checkpoint_of_another_model_is_named(reference):
    config = json.loads(str(reference["hubert_base_layout/config"]))
    state_dict = {k.split("/sd/")[1]: v for k, v in reference.items() if k.startswith("hubert_base_layout/sd/")}
    with_head = {**state_dict, "lm_head.weight": np.zeros((5, 32), np.float32)}  # a CTC head: not the encoder's
    with pytest.raises(ValueError, match=r"unexpected keys: lm_head.weight \(-> lm_head/kernel\)"):
        ssl.from_transformers(with_head, config)
    del state_dict["encoder.layers.1.final_layer_norm.bias"]
    with pytest.raises(ValueError, match=r"encoder.layers.\*.final_layer_norm.bias: layers \[0\], the model has 2"):
        ssl.from_transformers(state_dict, config)
    with pytest.raises(ValueError, match="model_type 'bert': expected hubert or wav2vec2"):
        ssl.from_transformers(state_dict, {**config, "model_type": "bert"})
