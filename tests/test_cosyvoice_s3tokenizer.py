"""CosyVoice's S3 speech tokenizers against the `s3tokenizer` package's ports
(tests/data/make_s3tokenizer_reference.py: narrowed, random weights): the log-mels of each
utterance of a padded batch, the encoder's frames within 1e-4 and the tokens exactly, for
v1 (VQ, 50 Hz), v1_25hz and v2 (FSQ, RoPE, FSMN memory); audio past 30 s in the package's
windows; the released parameter counts."""

import json
import pathlib

import jax
import numpy as np
import pytest

from jaxmodels.cosyvoice import s3tokenizer

REFERENCE = pathlib.Path(__file__).parent / "data" / "s3tokenizer_reference.npz"


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE) as f:
        return dict(f)


def _state_dict(r, name):
    """The model's state_dict, stored in half precision, as float32."""
    prefix = f"{name}/sd/"
    return {k.removeprefix(prefix): v.astype(np.float32) for k, v in r.items() if k.startswith(prefix)}


def test_log_mel_equals_the_package_per_utterance(reference):
    r = reference
    mel, frames = jax.jit(s3tokenizer.log_mel_spectrogram)(r["audio"], r["audio_len"])
    np.testing.assert_array_equal(frames, r["mel_len"])
    np.testing.assert_allclose(mel, r["mel"], atol=1e-4)


@pytest.mark.parametrize("name", ["v1", "v1_25hz", "v2"])
def test_frames_and_tokens_equal_the_package(reference, name):
    r = reference
    cfg = s3tokenizer.S3Config(**json.loads(str(r[f"{name}/config"])))
    variables = s3tokenizer.from_torch(_state_dict(r, "v1" if name == "v1_25hz" else name), cfg)
    model = s3tokenizer.S3Tokenizer(cfg)

    @jax.jit
    def run(mel, mel_len):
        hidden = model.apply(variables, mel, mel_len, method="hidden")
        return hidden, model.apply(variables, mel, mel_len)

    (hidden, hidden_len), (codes, codes_len) = run(r["mel"], r["mel_len"])
    np.testing.assert_array_equal(hidden_len, r[f"{name}/hidden_len"])
    np.testing.assert_array_equal(codes_len, r[f"{name}/codes_len"])
    expected = r[f"{name}/hidden"]
    for row, n in enumerate(hidden_len):  # valid frames (padded ones are upstream's garbage)
        scale = np.abs(expected[row, :n]).max()
        np.testing.assert_allclose(hidden[row, :n], expected[row, :n], rtol=1e-4, atol=1e-4 * scale)
        np.testing.assert_array_equal(codes[row, :n], r[f"{name}/codes"][row, :n])


@pytest.mark.parametrize("name", ["v1", "v2"])
def test_long_audio_is_tokenized_in_the_packages_windows(reference, name):
    """53 s and 3 s in one batch: the long row in three 30 s windows every 26 s, their tokens
    joined without the overlaps' halves (the last window, 1 s, adds none), the short row alone;
    v1 with a 30 s table."""
    r = reference
    cfg = s3tokenizer.S3Config(**{**json.loads(str(r[f"{name}/config"])), "n_audio_ctx": 1500})
    state_dict = _state_dict(r, name)
    if name == "v1":
        state_dict["encoder.positional_embedding"] = s3tokenizer.sinusoids(1500, cfg.n_audio_state)
    model, variables = s3tokenizer.S3Tokenizer(cfg), s3tokenizer.from_torch(state_dict, cfg)
    audio = r["long/audio"].astype(np.float32) / 32768
    codes, counts = jax.jit(lambda a, n: s3tokenizer.tokenize(model, variables, a, n))(audio, r["long/audio_len"])
    expected, expected_len = r[f"long/{name}/codes"], r[f"long/{name}/codes_len"]
    np.testing.assert_array_equal(counts, expected_len)
    for row, n in enumerate(expected_len):
        np.testing.assert_array_equal(codes[row, :n], expected[row, :n])


def test_released_parameter_counts_and_converter_errors(reference):
    assert s3tokenizer.param_count(s3tokenizer.config("speech_tokenizer_v1")) == 123_466_240
    assert s3tokenizer.param_count(s3tokenizer.config("speech_tokenizer_v2_25hz")) == 123_714_568
    r = reference
    cfg = s3tokenizer.S3Config(**json.loads(str(r["v2/config"])))
    state_dict = _state_dict(r, "v2")
    del state_dict["encoder.blocks.1.attn.fsmn_block.weight"]
    with pytest.raises(ValueError, match=r"encoder\.blocks\.\*\.attn\.fsmn_block\.weight: layers \[0\]"):
        s3tokenizer.from_torch(state_dict, cfg)
