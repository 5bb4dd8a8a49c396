"""CosyVoice's HiFT vocoder against the official generator (tests/data/make_hift_reference.py):
the F0, the source and the waveform within 1e-4, SineGen and SineGen2, both weight-norm key
namings; the released configurations' parameter counts."""

import json

import jax
import numpy as np
import pytest
from conftest import ROOT

from jaxmodels.cosyvoice import hift

REFERENCE = ROOT / "tests" / "data" / "hift_reference.npz"


def _case(name):
    with np.load(REFERENCE) as f:
        arrays = {k.split("/", 1)[1]: f[k] for k in f.files if k.startswith(f"{name}/")}
    state_dict = {k[3:]: v for k, v in arrays.items() if k.startswith("sd/")}
    fields = json.loads(str(arrays["config"]))
    cfg = hift.HiFTConfig(
        **{k: tuple(map(tuple, v)) if k.endswith("dilation_sizes") else v for k, v in fields.items()}
    )
    return cfg, state_dict, arrays


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("name", ["sinegen", "sinegen2"])
def test_equals_upstream(name):
    cfg, state_dict, ref = _case(name)
    model, variables = hift.HiFTGenerator(cfg), hift.from_torch(state_dict, cfg)
    mel = ref["mel"].transpose(0, 2, 1)
    y, f0 = jax.jit(model.apply)(variables, mel, jax.random.key(0))
    assert _rel(f0, ref["f0"]) < 1e-5
    source = model.apply(variables, f0, jax.random.key(0), method=hift.HiFTGenerator.source)
    assert _rel(source, ref["source"][:, 0]) < 1e-4
    decoded = model.apply(variables, mel, ref["source"][:, 0], method=hift.HiFTGenerator.decode)
    assert decoded.shape == ref["y"].shape == (2, 12 * cfg.hop)
    assert _rel(decoded, ref["y"]) < 1e-4
    assert _rel(y, ref["y"]) < 1e-4


def test_released_configurations_and_errors():
    # Parameter counts of the released hift.pt files (CosyVoice-300M: 227 tensors, CosyVoice2: 328).
    assert hift.param_count(hift.config("hift_cosyvoice_300m")) == 20_460_591
    assert hift.param_count(hift.config("hift_cosyvoice2")) == 20_821_295
    assert hift.config("hift_cosyvoice2").hop == 480
    with pytest.raises(ValueError, match="unknown HiFT model 'hift_v3'; valid: hift_cosyvoice_300m, hift_cosyvoice2"):
        hift.config("hift_v3")
    cfg, state_dict, _ = _case("sinegen")
    del state_dict["conv_pre.bias"]
    state_dict["conv_post.parametrizations.weight.original1"] = np.zeros((18, 16, 5), np.float32)
    with pytest.raises(ValueError, match=r"missing parameters: conv_pre/bias(.|\n)*conv_post.parametrizations.weight"):
        hift.from_torch(state_dict, cfg)


def test_source_is_voiced_sines_and_unvoiced_noise():
    # SineGen2's phase integrates the F0: a constant 200 Hz gives a 200 Hz sine of amplitude
    # sine_amp in the fundamental; below the threshold only noise of sine_amp / 3.
    cfg = hift.config("hift_cosyvoice2", nb_harmonics=0, noise_std=0.0)
    f0 = np.full((1, 48000), 200.0, np.float32)
    sines = np.asarray(hift.sine_source(cfg, f0, jax.random.key(0)))[0, :, 0]
    spectrum = np.abs(np.fft.rfft(sines))
    assert np.argmax(spectrum) == 400  # 200 Hz in 2 s
    np.testing.assert_allclose(np.max(np.abs(sines)), 0.1, rtol=1e-3)
    noise = np.asarray(hift.sine_source(cfg, np.zeros_like(f0), jax.random.key(1)))
    np.testing.assert_allclose(noise.std(), 0.1 / 3, rtol=0.02)
