"""The codec task: adversarial training sharded as on one device, the losses and balancer
as AudioCraft's, a short run end to end with its artefacts, and the compress command."""

import json
import os
import wave

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_CODEC, assert_same_updates

from jaxmodels.codec import losses
from trainers import config as config_lib
from trainers import sharding
from trainers.data import speech
from trainers.loop import Trainer, with_state


def codec_config(corpus="", **sections):
    """A tiny codec at 8 kHz (hop 4, 3 codebooks of 8 at 6 kbps each) with a one-scale discriminator."""
    base = {
        "task": "codec",
        "model": TINY_CODEC,
        "data": {
            "source": "speech",
            "path": corpus,
            "eval_split": "test",
            "batch_size": 8,
            "eval_batch_size": 8,
            "max_seconds": 2.5,
            "resample": True,
            "corpus_train_size": 8,
            "corpus_test_size": 8,
        },
        "codec": {
            "segment_seconds": 0.05,
            "disc_filters": 2,
            "disc_n_ffts": [64],
            "disc_hop_lengths": [16],
            "disc_win_lengths": [64],
            "msspec_range": [5, 7],
            "n_mels": 8,
            "eval_examples": 2,
        },
        "optimizer": {"name": "adam", "lr": 1e-3, "b1": 0.5, "b2": 0.9, "weight_decay": 0.0, "schedule": "constant"},
        "train": {"steps": 4, "log_every": 2, "eval_every": 4, "checkpoint_every": 4, "async_checkpointing": False},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}  # a new dict: TINY_CODEC is shared
    return config_lib.parse(base)


def run_steps(cfg, devices=None, steps=2):
    """(metrics of each step, params and model state before, the same after)."""
    trainer = Trainer(cfg, devices)
    state = trainer.init(0)
    before = jax.device_get(with_state(state.params, state.model_state))
    batch = trainer.task.example_batch(cfg.data.batch_size)
    batch["audio"] = (0.1 * np.random.default_rng(0).standard_normal(batch["audio"].shape)).astype(np.float32)
    batch["mask"][-1] = 0.0  # a skipped row must not count
    history = []
    with trainer.context():
        for _ in range(steps):
            state, metrics = trainer.train_step(state, sharding.to_global(trainer.mesh, batch, cfg.data.batch_size))
            history.append({k: float(v) for k, v in metrics.items()})
    return history, before, jax.device_get(with_state(state.params, state.model_state))


@pytest.mark.slow
def test_adversarial_step_sharded_matches_one_device():
    # All three discriminators (one period, two scales: the spectrally normalised and a pooled
    # one; an eighth of HiFi-GAN's widths) with HiFi-GAN's least-squares losses; msd's
    # spectral-norm vectors are model state moved by the step. A step of lr 0.1 moves these
    # discriminators so far that the generator's next gradients amplify float32 rounding a
    # thousandfold; 0.01 keeps it linear.
    # Codebooks start uniform here: 50 Lloyd iterations of k-means amplify the last-bit
    # differences of a sharded sum into different clusters (k-means is tested on its own).
    # SGD, whose step is the gradient: the updates compare at float32 reduction-order
    # tolerance (Adam's step is tested against torch's in test_optim).
    args = {**codec_config().model.args, "kmeans_init": False}
    sgd = {"name": "sgd", "lr": 0.01, "momentum": 0.0}
    gan = {
        "discriminators": ["mpd", "msd", "msstft"],
        "disc_periods": [3],
        "disc_scales": 2,
        "disc_channel_divisor": 8,
        "adversarial_loss": "lsgan",
        "adversarial_reduction": "sum",
        "loss_weights": {"adv": 1.0, "feat": 2.0, "l1": 1.0, "msspec": 2.0},
    }
    ref_history, before, ref_params = run_steps(
        codec_config(mesh={"data": 1}, model={"args": args}, optimizer=sgd, codec=gan), devices=jax.devices()[:1]
    )
    history, before_sharded, params = run_steps(
        codec_config(mesh={"data": 8}, model={"args": args}, optimizer=sgd, codec=gan)
    )
    jax.tree.map(np.testing.assert_array_equal, before_sharded, before)
    for a, b in zip(history, ref_history):
        for k in (
            "train/loss",
            "train/d_loss",
            "train/commitment",
            "train/msspec",
            "train/adv",
            "train/feat",
            "train/grad_norm",
            "train/d_grad_norm",
        ):
            np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=1e-6, err_msg=k)
    assert_same_updates(before, params, ref_params)
    assert ref_history[0]["train/skipped"] == 1.0
    assert ref_history[1]["train/d_grad_norm"] > 0 and ref_history[1]["train/grad_norm"] > 0
    u = "spectral", "msd", "discriminators_0", "convs_1", "weight_u"
    moved = [np.abs(get(params, u) - get(before, u)).max() for params in (params, ref_params)]
    assert min(moved) > 1e-3  # a power iteration a step


def get(tree, path):
    for key in path:
        tree = tree[key]
    return np.asarray(tree)


@pytest.mark.slow  # training runs of a minute
def test_adversarial_start_holds_the_discriminator_losses_back():
    # Before codec.adversarial_start the codec learns as with only its reconstruction
    # losses (the discriminator trains meanwhile); from then on adv and feat count.
    delayed, _, _ = run_steps(codec_config(codec={"adversarial_start": 1}), devices=jax.devices()[:1])
    plain, _, _ = run_steps(
        codec_config(codec={"loss_weights": {"l1": 0.1, "msspec": 2.0}}), devices=jax.devices()[:1]
    )
    for k in ("train/loss", "train/grad_norm", "train/l1", "train/msspec"):
        np.testing.assert_allclose(delayed[0][k], plain[0][k], rtol=1e-5, err_msg=k)
    for k in ("train/l1", "train/msspec"):  # the same codec after the first step
        np.testing.assert_allclose(delayed[1][k], plain[1][k], rtol=1e-4, err_msg=k)
    assert delayed[0]["train/d_grad_norm"] > 0 and plain[0]["train/d_grad_norm"] == 0
    assert abs(delayed[1]["train/loss"] - plain[1]["train/loss"]) > 1e-3


def test_balancer_gives_each_loss_its_share():
    # Two losses of y whose gradients differ 100-fold in size: balanced, each contributes
    # weight / sum(weights) of a unit-norm gradient (AudioCraft's Balancer.backward).
    y = jnp.ones((4, 10, 1))
    grads = {"a": jnp.full_like(y, 0.01), "b": jnp.full_like(y, -1.0)}
    values = {"a": jnp.asarray(1.0), "b": jnp.asarray(2.0)}
    state = losses.balancer_init(["a", "b"])
    out, effective, state, shares = losses.balance(grads, values, {"a": 3.0, "b": 1.0}, state)
    per_item = lambda g: float(jnp.linalg.norm(g[0]))  # noqa: E731
    norm_a, norm_b = per_item(grads["a"]), per_item(grads["b"])
    np.testing.assert_allclose(float(out[0, 0, 0]), 0.75 * 0.01 / norm_a - 0.25 / norm_b, rtol=1e-5)
    np.testing.assert_allclose(float(effective), 0.75 / norm_a * 1.0 + 0.25 / norm_b * 2.0, rtol=1e-5)
    np.testing.assert_allclose(shares["a"], norm_a / (norm_a + norm_b), rtol=1e-5)
    # Unbalanced: a plain weighted sum.
    out, _, _, _ = losses.balance(
        grads, values, {"a": 3.0, "b": 1.0}, losses.balancer_init(["a", "b"]), balance_grads=False
    )
    np.testing.assert_allclose(float(out[0, 0, 0]), 3 * 0.01 - 1.0, rtol=1e-6)


def test_stft_and_si_snr():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, 1000)).astype(np.float32)
    ours = np.asarray(losses.stft(jnp.asarray(x), 256, 64, 256, normalized=False))
    ref = (
        torch.stft(torch.from_numpy(x), 256, 64, 256, torch.hann_window(256), center=False, return_complex=True)
        .numpy()
        .transpose(0, 2, 1)
    )
    np.testing.assert_allclose(ours, ref, atol=1e-3)
    clean = jnp.asarray(x[:, :, None])
    noise = jnp.asarray(np.random.default_rng(1).standard_normal(clean.shape).astype(np.float32))
    # SI-SNR ignores scale and reads 10 log10(signal / noise power).
    np.testing.assert_allclose(losses.si_snr(3 * clean + 0.1 * noise, clean), 10 * np.log10(9 / 0.01), atol=0.3)
    fb = losses.mel_filterbank(129, 0.0, 4000.0, 16, 8000)
    assert fb.shape == (129, 16) and np.all(fb.max(axis=0) > 0.5) and fb.min() >= 0


@pytest.mark.slow
def test_codebooks_and_balancer_are_model_state_the_ema_averages_the_codebooks():
    trainer = Trainer(codec_config(optimizer={"ema_decay": 0.9}), devices=jax.devices()[:1])
    state = trainer.init(0)
    assert set(state.params) == set(state.opt_state) == {"generator", "discriminator"}  # the optimizer's
    assert set(state.model_state) == {"codebooks", "balancer"}
    assert set(state.ema_params) == {"generator", "discriminator", "codebooks"}
    batch = trainer.task.example_batch(8)
    batch["audio"] = (0.1 * np.random.default_rng(0).standard_normal(batch["audio"].shape)).astype(np.float32)
    with trainer.context():
        new, _ = trainer.train_step(jax.device_get(state), sharding.to_global(trainer.mesh, batch, 8))
    ema, codebooks = jax.device_get(new.ema_params["codebooks"]), jax.device_get(new.model_state["codebooks"])
    old = jax.device_get(state.model_state["codebooks"])
    np.testing.assert_allclose(ema["embed"], 0.9 * old["embed"] + 0.1 * codebooks["embed"], rtol=1e-5, atol=1e-7)
    assert not np.allclose(codebooks["embed"], old["embed"])  # moved by their own rule, not by the optimizer
    assert ema["inited"].dtype == bool and np.array_equal(ema["inited"], codebooks["inited"])  # flags: not averaged
    # Inference reads the averaged codebooks and the current balancer.
    assert new.inference_params["codebooks"] is new.ema_params["codebooks"]
    assert new.inference_params["balancer"] is new.model_state["balancer"]


def test_codec_config_errors():
    with pytest.raises(config_lib.ConfigError, match="unknown loss 'stft'"):
        codec_config(codec={"loss_weights": {"stft": 1.0}})
    with pytest.raises(ValueError, match="mono"):
        Trainer(codec_config(model={"name": "encodec_48khz", "args": {}}))


@pytest.mark.slow  # training runs of a minute
def test_short_run_writes_audio_and_compresses(tmp_path):
    from trainers import compress
    from trainers.loop import train

    corpus = tmp_path / "corpus"
    cfg = codec_config(str(corpus), mesh={"data": 8})
    workdir = tmp_path / "run"
    metrics = train(cfg, str(workdir))
    for bw in ("6", "18"):
        assert np.isfinite(metrics[f"eval/si_snr_{bw}kbps"]) and metrics[f"eval/mel_distance_{bw}kbps"] > 0
        assert metrics[f"eval/entropy_bitrate_{bw}kbps"] <= metrics[f"eval/bitrate_{bw}kbps"] + 1e-9
    names = sorted(os.listdir(workdir / "audio"))
    assert names == sorted(f"{i}_{n}.wav" for i in range(2) for n in ("original", "6kbps", "18kbps"))
    assert (workdir / "spectrograms.png").stat().st_size > 1000
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert any("train/share_msspec" in line for line in lines)

    # The compress command round-trips one corpus file through the trained codec.
    (cfg_path := tmp_path / "codec.yaml").write_text(config_lib.dump(cfg))
    source = speech.read_manifest(str(corpus / "test.jsonl"))[0]["source"]
    run = ["--config", str(cfg_path), "--workdir", str(workdir)]
    compress.main(["encode", source, str(tmp_path / "codes.npz"), "--bandwidth", "6", *run])
    with np.load(tmp_path / "codes.npz") as codes:
        assert codes["codes_0"].shape[1] == 1 and int(codes["sample_rate"]) == 8000
    compress.main(["decode", str(tmp_path / "codes.npz"), str(tmp_path / "back.wav"), *run])
    with wave.open(str(tmp_path / "back.wav")) as w, wave.open(source) as original:
        assert w.getframerate() == 8000
        assert w.getnframes() == int(np.ceil(original.getnframes() * 8000 / original.getframerate()))
    with pytest.raises(SystemExit, match="not a codes file"):
        compress.main(["decode", source, str(tmp_path / "x.wav"), *run])
    with pytest.raises(SystemExit, match=r"^error: .*absent/back.wav"):  # a missing output folder: one line
        compress.main(["decode", str(tmp_path / "codes.npz"), str(tmp_path / "absent" / "back.wav"), *run])
