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


@pytest.mark.parametrize("name", ["sinegen", pytest.param("sinegen2", marks=pytest.mark.slow)])
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


def test_yin_tracks_a_voice_and_finds_silence_unvoiced():
    from trainers.tasks.hift import yin_f0

    sr, hop = 16000, 160
    t = np.arange(sr) / sr
    f0 = 150 + 50 * t  # a rising voice with harmonics
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voice = sum(np.sin(k * phase) / k for k in range(1, 6)).astype(np.float32)
    audio = np.concatenate([voice, np.zeros(sr // 2, np.float32)])
    track = yin_f0(audio, sr, hop, 71.0, 800.0)
    assert track.shape == (len(audio) // hop,)
    frames = np.arange(5, 95)
    np.testing.assert_allclose(track[frames], f0[frames * hop], rtol=0.01)
    assert np.all(track[110:] == 0)


@pytest.mark.slow  # the discriminators' compile
def test_training_step_sharded_matches_one_device(tone_corpus):
    """One adversarial step of a narrowed HiFT (every loss; the spectrogram discriminator, the
    multi-period one being sharded in test_codec_training) over 8 devices equals it on one
    (SGD: the updates compare at float32 reduction-order tolerance)."""
    from conftest import assert_same_updates, manifest_data, one_step_on_one_and_eight_devices

    from trainers import config as config_lib

    args = {"sample_rate": 16000, "in_channels": 16, "base_channels": 16, "f0_channels": 8}
    args.update(upsample_rates=[5, 4, 2], upsample_kernel_sizes=[10, 8, 4], source_resblock_kernel_sizes=[3, 3, 3])
    args.update(source_resblock_dilation_sizes=[[1, 3]] * 3, resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]])

    def make_config(mesh):
        return config_lib.parse(
            {
                "task": "hift",
                "model": {"name": "hift_cosyvoice_300m", "args": args},
                "mesh": mesh,
                "data": manifest_data(tone_corpus, max_seconds=0.1),
                "hift": {
                    "segment_frames": 16,
                    "n_fft": 320,
                    "win_length": 320,
                    "n_mels": 16,
                    "discriminators": ["mrsd"],
                    "disc_channel_divisor": 8,
                },
                "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.0},
            }
        )

    def make_batch(task):
        records = [task.train_transform(task.train_source()[i], np.random.default_rng(i)) for i in range(8)]
        batch = {k: np.stack([r[k] for r in records]) for k in records[0]}
        batch["mask"][-1] = 0.0
        return batch

    results = one_step_on_one_and_eight_devices(make_config, make_batch)
    (before, ref, ref_after), (before_sharded, got, after) = results
    jax.tree.map(np.testing.assert_array_equal, before_sharded, before)
    for k in ("train/loss", "train/d_loss", "train/adv", "train/feat", "train/mel", "train/tpr", "train/f0"):
        np.testing.assert_allclose(got[k], ref[k], rtol=2e-4, atol=1e-6, err_msg=k)
    assert ref["train/f0"] > 0 and ref["train/skipped"] == 1
    assert_same_updates(before, after, ref_after)
