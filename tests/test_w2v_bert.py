"""w2v-BERT 2.0's Conformer encoder against transformers (tests/data/make_w2v_bert_reference.py)."""

import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT

from jaxmodels import ssl
from jaxmodels.ssl import w2v_bert

VALID = np.array([40, 27])  # valid frames of the two rows


@pytest.fixture(scope="module")
def reference():
    with np.load(ROOT / "tests" / "data" / "w2v_bert_reference.npz") as f:
        return {k: f[k] for k in f.files}


def load(reference, case, **overrides):
    config = json.loads(str(reference[f"{case}/config"]))
    state_dict = {k.split("/sd/")[1]: v for k, v in reference.items() if k.startswith(f"{case}/sd/")}
    return ssl.from_transformers(state_dict, config, **overrides)


def assert_close_on_valid_frames(ours, theirs, frames, message=""):
    assert ours.shape == theirs.shape, message
    for row, n in enumerate(frames):
        scale = np.abs(theirs[row, :n]).max()
        np.testing.assert_allclose(ours[row, :n], theirs[row, :n], rtol=1e-4, atol=1e-4 * scale, err_msg=message)


# The released model's scheme here; the others in the slow tier.
OTHER_CASES = [pytest.param(c, marks=pytest.mark.slow) for c in ("no_positions", "rotary", "relative", "adapter")]


@pytest.mark.parametrize("case", ["relative_key", *OTHER_CASES])
def test_every_hidden_state_equals_transformers_on_a_padded_batch(reference, case):
    model, variables = load(reference, case)
    paddings = 1.0 - reference["attention_mask"].astype(np.float32)
    apply = jax.jit(lambda v, x, p: (model.apply(v, x, p, method="hidden_states"), model.apply(v, x, p)))
    hidden, last = apply(variables, reference["features"], paddings)
    assert len(hidden) == model.num_hidden_layers + 1
    for i, ours in enumerate(hidden):
        assert_close_on_valid_frames(ours, reference[f"{case}/hidden_{i}"], VALID, f"{case} hidden_{i}")
    # With the adapter, after it: frames subsampled 4x, a narrower width, its own valid lengths.
    assert_close_on_valid_frames(last, reference[f"{case}/last"], w2v_bert.output_lengths(model, VALID), case)


def test_audio_in_equals_the_feature_extractor_and_transformers(reference):
    """features() of a padded batch of two waveforms (47 and 68 filterbank frames) equals
    SeamlessM4TFeatureExtractor's, values and mask; the model's hidden states of them equal
    transformers' of each waveform alone."""
    waves = [reference[f"audio/wave_{i}"] for i in range(2)]
    lengths = np.array([len(w) for w in waves])
    audio = np.stack([np.pad(w, (0, lengths.max() - len(w))) for w in waves])
    features, frames = jax.jit(w2v_bert.features)(audio, lengths)
    assert frames.tolist() == reference["audio/batch_mask"].sum(1).tolist() == [23, 34]
    np.testing.assert_allclose(features, reference["audio/batch_features"], atol=2e-3)
    model, variables = load(reference, "relative_key")
    paddings = (np.arange(features.shape[1])[None] >= np.asarray(frames)[:, None]).astype(np.float32)
    hidden = np.stack(jax.jit(partial(model.apply, method="hidden_states"))(variables, features, paddings), 1)
    for row, n in enumerate(frames.tolist()):
        alone = reference[f"relative_key/audio_hidden_{row}"]
        np.testing.assert_allclose(hidden[row, :, :n], alone[:, :n], rtol=1e-3, atol=1e-3 * np.abs(alone).max())


def test_masked_frames_take_the_learned_embedding(reference):
    model, variables = load(reference, "relative_key")
    paddings = 1.0 - reference["attention_mask"].astype(np.float32)
    mask = reference["mask"]
    apply = lambda v, x, p, m: (model.apply(v, x, p, m, method="hidden_states")[0], model.apply(v, x, p, m))
    hidden, last = jax.jit(apply)(variables, reference["features"], paddings, mask)
    assert_close_on_valid_frames(hidden, reference["relative_key/masked_hidden_0"], VALID)
    assert_close_on_valid_frames(last, reference["relative_key/masked_last"], VALID)


def test_bfloat16_and_remat_stay_close_to_float32(reference):
    model, variables = load(reference, "relative_key")
    paddings = 1.0 - reference["attention_mask"].astype(np.float32)
    expected = reference["relative_key/last"]
    remat = jax.jit(model.clone(remat=True).apply)(variables, reference["features"], paddings)
    assert_close_on_valid_frames(remat, expected, VALID)
    half = jax.jit(model.clone(dtype=jnp.bfloat16).apply)(variables, reference["features"], paddings)
    assert half.dtype == jnp.bfloat16
    for row, n in enumerate(VALID):
        error = np.abs(np.float32(half[row, :n]) - expected[row, :n]).max()
        assert error < 0.05 * np.abs(expected[row, :n]).max()  # bfloat16 rounding: about 1% here


def test_checkpoints_that_do_not_fit_are_named(reference):
    config = json.loads(str(reference["relative_key/config"]))
    state_dict = {k.split("/sd/")[1]: v for k, v in reference.items() if k.startswith("relative_key/sd/")}
    prefixed = {f"wav2vec2_bert.{k}": v for k, v in state_dict.items()}  # as a model around the encoder saves it
    w2v_bert.from_transformers(prefixed, config)
    with_head = {**state_dict, "lm_head.weight": np.zeros((5, 32), np.float32)}  # a CTC head: not the encoder's
    with pytest.raises(ValueError, match=r"unexpected keys: lm_head.weight \(-> lm_head/kernel\)"):
        w2v_bert.from_transformers(with_head, config)
    wider = {**config, "right_max_position_embeddings": 4}  # 6 + 4 + 1 distances, the checkpoint's 6 + 2 + 1
    with pytest.raises(ValueError, match=r"distance_embedding.weight: checkpoint \(2, 9, 8\) vs model \(2, 11, 8\)"):
        w2v_bert.from_transformers(state_dict, wider)
    del state_dict["encoder.layers.1.final_layer_norm.bias"]
    with pytest.raises(ValueError, match=r"encoder.layers.\*.final_layer_norm.bias: layers \[0\], the model has 2"):
        w2v_bert.from_transformers(state_dict, config)
    with pytest.raises(ValueError, match="model_type 'wav2vec2': expected wav2vec2-bert"):
        w2v_bert.from_transformers(state_dict, {**config, "model_type": "wav2vec2"})


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(position_embeddings_type="alibi"), "position_embeddings_type 'alibi' is not supported"),
        (dict(conv_depthwise_kernel_size=4), "conv_depthwise_kernel_size 4: must be odd"),
        (dict(use_intermediate_ffn_before_adapter=True), "use_intermediate_ffn_before_adapter needs add_adapter"),
        (dict(hidden_act="mish"), "activation 'mish' is not supported"),
    ],
)
def test_unsupported_configs_are_named(args, message):
    model = w2v_bert.W2vBertEncoder(32, 1, 4, 37, **args)
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 160))))
