"""CosyVoice's HiFT vocoder trained as upstream's HiFiGan wrapper (cosyvoice/hifigan/hifigan.py).

One jitted step: the generator turns the crop's mel into a waveform (the F0 predictor's
F0 drives the source); the discriminators (HiFi-GAN's multi-period, CosyVoice's
multi-resolution spectrogram) take an Adam step on their least-squares loss plus the TPR
loss (real against the detached waveform); then the generator's losses against the
updated discriminators: least squares, feature matching, log-mel L1 (f_max half the
sample rate, unlike the features), TPR with the arguments swapped, and the F0 predictor's
L1 against the crop's F0 track. The track is YIN's (de Cheveigné and Kawahara 2002) on the
host, where upstream runs pyworld's harvest. Eval reports the log-mel distance and the F0
error of the vocoded eval split and writes a few utterances as WAVs and spectrograms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmodels.codec import losses
from jaxmodels.codec.hifigan_discriminator import MultipleDiscriminator
from jaxmodels.cosyvoice import hift
from trainers import sharding
from trainers.config import ConfigError
from trainers.data import speech
from trainers.data.speech import AudioDataConfig
from trainers.tasks import SplitSources
from trainers.tasks._waveform import AudioCrop, eval_examples, masked_mean, write_examples

HIFT_LOSSES = ("adv", "feat", "mel", "tpr", "f0")


@dataclass
class HiFTTaskConfig:
    """Vocoder training (task: hift); defaults are CosyVoice-300M's
    (examples/libritts/cosyvoice/conf/cosyvoice.yaml)."""

    segment_frames: int = 96  # random training crops, in mel frames (24576 samples at 22.05 kHz)
    # The features: Matcha-TTS's mel_spectrogram (n_fft, hop, window, mels, f_min, f_max).
    n_fft: int = 1024
    win_length: int = 1024
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float = 8000.0
    discriminators: list[str] = field(default_factory=lambda: ["mpd", "mrsd"])
    disc_channel_divisor: int = 1  # mpd and mrsd narrowed (1: upstream's widths; 2, 4 or 8)
    # Upstream's weights: feat is its feat_match_loss_weight 2 times its feature_loss's own 2;
    # mel its multi_mel_spectral_recon_loss_weight.
    loss_weights: dict[str, float] = field(
        default_factory=lambda: {"adv": 1.0, "feat": 4.0, "mel": 45.0, "tpr": 1.0, "f0": 1.0}
    )
    tpr_tau: float = 0.04
    f0_min: float = 71.0  # the F0 tracker's range (harvest's defaults)
    f0_max: float = 800.0
    eval_examples: int = 2  # eval utterances written as WAVs and spectrograms

    def __post_init__(self):
        unknown = sorted(set(self.loss_weights) - set(HIFT_LOSSES))
        if unknown:
            raise ConfigError(f"hift.loss_weights: unknown loss {unknown[0]!r}; valid: {', '.join(HIFT_LOSSES)}")


SECTIONS = {"data": AudioDataConfig, "hift": HiFTTaskConfig}


def yin_f0(audio: np.ndarray, sample_rate: int, hop: int, f0_min: float, f0_max: float, threshold: float = 0.15):
    """F0 in Hz of frames centred every `hop` samples (len(audio) // hop of them), 0 where unvoiced:
    YIN's cumulative-mean-normalised difference, its first dip below `threshold` within the
    lag range, refined by a parabola."""
    lag_min, lag_max = int(sample_rate / f0_max), int(np.ceil(sample_rate / f0_min))
    width = 2 * lag_max
    padded = np.pad(audio.astype(np.float64), (width // 2, width))
    frames = len(audio) // hop
    index = np.arange(frames)[:, None] * hop + np.arange(width)[None]
    x = padded[index]  # (frames, width): the window and the lags it is compared at
    size = 1 << int(np.ceil(np.log2(2 * width)))
    spec = np.fft.rfft(x, size)
    head = np.fft.rfft(x[:, :lag_max], size)
    cross = np.fft.irfft(np.conj(head) * spec, size)[:, : lag_max + 1]  # sum_j x[j] x[j + lag], j < lag_max
    energy = np.cumsum(np.square(x), axis=1)
    first = energy[:, lag_max - 1 : lag_max]
    # sum_j x[j + lag]^2 over j < lag_max, for every lag
    shifted = energy[:, lag_max - 1 :] - np.concatenate([np.zeros((frames, 1)), energy[:, :lag_max]], axis=1)
    diff = first + shifted - 2 * cross
    cumulative = np.cumsum(diff[:, 1:], axis=1) / np.arange(1, lag_max + 1)
    normalised = np.concatenate([np.ones((frames, 1)), diff[:, 1:] / np.maximum(cumulative, 1e-12)], axis=1)
    f0 = np.zeros(frames, np.float32)
    for t in range(frames):
        below = np.nonzero(normalised[t, lag_min:lag_max] < threshold)[0]
        if not len(below) or first[t, 0] < 1e-6 * lag_max:
            continue
        lag = lag_min + below[0]
        while lag + 1 < lag_max and normalised[t, lag + 1] < normalised[t, lag]:
            lag += 1
        a, b, c = normalised[t, lag - 1], normalised[t, lag], normalised[t, lag + 1]
        shift = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c > 0 else 0.0
        f0[t] = sample_rate / (lag + shift)
    return f0


class VocoderCrop:
    """Manifest record -> (audio crop, its F0 track per mel frame, mask): AudioCrop's crop,
    which starts on a frame, and YIN's F0 of it."""

    def __init__(self, cfg, model: hift.HiFTConfig, frames: int, train: bool):
        c = cfg.hift
        self.crop = AudioCrop(cfg, model.sample_rate, frames * model.hop, train, model.hop)
        self.hop, self.sample_rate, self.range = model.hop, model.sample_rate, (c.f0_min, c.f0_max)

    def __call__(self, record, rng):
        out = self.crop(record, rng)
        out["f0"] = yin_f0(out["audio"], self.sample_rate, self.hop, *self.range)
        return out


class HiFTTask(SplitSources):
    optimizer_groups = ("generator", "discriminator")

    def __init__(self, cfg):
        self.cfg = cfg
        c = cfg.hift
        self.config = hift.config(cfg.model.name, **cfg.model.args)
        self.weights = {k: v for k, v in c.loss_weights.items() if v > 0}
        if c.n_mels != self.config.in_channels:
            raise ConfigError(
                f"hift.n_mels is {c.n_mels}; model {cfg.model.name} reads {self.config.in_channels} bins"
            )
        self.model = hift.HiFTGenerator(self.config)
        self.discriminator = MultipleDiscriminator(tuple(c.discriminators), channel_divisor=c.disc_channel_divisor)
        self.train_transform = VocoderCrop(cfg, self.config, c.segment_frames, True)
        frames = int(cfg.data.max_seconds * self.config.sample_rate) // self.config.hop
        self.eval_transform = VocoderCrop(cfg, self.config, frames, False)
        self._vocode = jax.jit(self._vocode_all)

    def make_source(self, split):
        return speech.SpeechSource(self.cfg, split)

    def example_batch(self, n):
        length = self.train_transform.crop.length
        return {
            "audio": np.zeros((n, length), np.float32),
            "audio_length": np.full((n,), length, np.int32),
            "f0": np.zeros((n, length // self.config.hop), np.float32),
            "mask": np.ones((n,), np.float32),
        }

    def mel(self, audio, f_max):
        c, m = self.cfg.hift, self.config
        return hift.mel_spectrogram(audio, m.sample_rate, c.n_fft, m.hop, c.win_length, c.n_mels, c.f_min, f_max)

    def init(self, rng, batch):
        k_gen, k_disc, k_src = jax.random.split(rng, 3)
        audio = jnp.asarray(batch["audio"])
        generator = self.model.init(k_gen, self.mel(audio, self.cfg.hift.f_max), k_src)["params"]
        discriminator = self.discriminator.init(k_disc, audio[..., None])["params"]
        return {"params": {"generator": generator, "discriminator": discriminator}}

    def convert_weights(self, state_dict):
        """A released hift.pt: the generator (it has no discriminator)."""
        return {"params": {"generator": hift.from_torch(state_dict, self.config)["params"]}}

    def train_update(self, tx, params, opt_state, model_state, batch, rng, step):
        c = self.cfg.hift
        x, mask = batch["audio"], batch["mask"]
        mel = self.mel(x, c.f_max)

        def generate(generator):
            return self.model.apply({"params": generator}, mel, rng)

        (y, f0), generator_vjp = jax.vjp(generate, params["generator"])
        real_audio, fake_audio = x[..., None], y[..., None]

        def discriminator_loss(d):
            fake, _ = self.discriminator.apply({"params": d}, jax.lax.stop_gradient(fake_audio))
            real, _ = self.discriminator.apply({"params": d}, real_audio)
            loss = masked_mean(losses.discriminator_loss(fake, real, "lsgan", "sum"), mask)
            return loss + self.weights.get("tpr", 0.0) * losses.tpr_loss(real, fake, mask, c.tpr_tau)

        d_loss, d_grads = jax.value_and_grad(discriminator_loss)(params["discriminator"])
        d_updates, d_opt = tx.update(d_grads, opt_state["discriminator"], params["discriminator"])
        discriminator = optax.apply_updates(params["discriminator"], d_updates)

        real, real_fmaps = jax.lax.stop_gradient(self.discriminator.apply({"params": discriminator}, real_audio))
        frames = jnp.arange(f0.shape[1])[None] < (batch["audio_length"] // self.config.hop)[:, None]

        def generator_loss(y, f0):
            fake, fmaps = self.discriminator.apply({"params": discriminator}, y[..., None])
            adv, feat = losses.generator_losses(fake, fmaps, real_fmaps, "lsgan", "sum")
            mel_l1 = losses.per_example(jnp.abs(self.mel(y, None) - self.mel(x, None)))
            f0_l1 = jnp.sum(jnp.abs(f0 - batch["f0"]) * frames, 1) / jnp.maximum(jnp.sum(frames, 1), 1)
            values = {
                "adv": masked_mean(adv, mask),
                "feat": masked_mean(feat, mask),
                "mel": masked_mean(mel_l1, mask),
                "tpr": losses.tpr_loss(fake, real, mask, c.tpr_tau),
                "f0": masked_mean(f0_l1, mask),
            }
            return sum(w * values[k] for k, w in self.weights.items()), values

        (g_loss, values), (y_grad, f0_grad) = jax.value_and_grad(generator_loss, (0, 1), has_aux=True)(y, f0)
        (g_grads,) = generator_vjp((y_grad, f0_grad))
        g_updates, g_opt = tx.update(g_grads, opt_state["generator"], params["generator"])
        generator = optax.apply_updates(params["generator"], g_updates)
        metrics = {
            "train/loss": g_loss,
            "train/d_loss": d_loss,
            "train/grad_norm": optax.tree.norm(g_grads),
            "train/d_grad_norm": optax.tree.norm(d_grads),
            "train/skipped": jnp.sum(1.0 - mask),
            **{f"train/{k}": v for k, v in values.items()},
        }
        new_params = {"generator": generator, "discriminator": discriminator}
        return new_params, {"generator": g_opt, "discriminator": d_opt}, model_state, metrics

    # -- evaluation ---------------------------------------------------------------------
    def _vocode_all(self, params, audio):
        """(waveform, predicted F0) of the audio's own mel; the source's draws fixed."""
        mel = self.mel(audio, self.cfg.hift.f_max)
        return self.model.apply({"params": params["generator"]}, mel, jax.random.key(0))

    def eval_outputs(self, params, batch):
        audio, lengths = batch["audio"], batch["audio_length"]
        y, f0 = self._vocode_all(params, audio)
        frames = jnp.arange(f0.shape[1])[None] < (lengths // self.config.hop)[:, None]
        distance = jnp.abs(self.mel(y, None) - self.mel(audio, None)).mean(-1)
        voiced = frames & (batch["f0"] > 0)
        return {
            "mel_distance": jnp.sum(distance * frames, 1) / jnp.maximum(jnp.sum(frames, 1), 1),
            "f0_error_hz": jnp.sum(jnp.abs(f0 - batch["f0"]) * voiced, 1),
            "voiced_frames": jnp.sum(voiced, 1),
        }

    def eval_metrics(self, outputs):
        voiced = max(float(np.sum(outputs["voiced_frames"])), 1.0)
        return {
            "mel_distance": float(np.mean(outputs["mel_distance"])),
            "f0_error_hz": float(np.sum(outputs["f0_error_hz"])) / voiced,
        }

    def generate(self, params, mesh):
        """The first hift.eval_examples eval utterances, vocoded from their mel (for the artefacts)."""
        audio, lengths = eval_examples(self, self.cfg.hift.eval_examples)
        y, _ = self._vocode(sharding.host_copy(params), audio)
        return {}, {"examples_original": audio, "examples_vocoded": np.asarray(y), "examples_length": lengths}

    def write_artifacts(self, workdir, outputs, step):
        spectrogram = lambda wav: self.mel(jnp.asarray(wav)[None], None)[0]  # noqa: E731
        write_examples(workdir, outputs, ("original", "vocoded"), self.config.sample_rate, spectrogram, step)


TASK = HiFTTask
