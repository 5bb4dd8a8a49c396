"""Neural audio codec (EnCodec / SoundStream) trained as AudioCraft's compression solver.

One jitted step does what audiocraft/solvers/compression.py's run_step does in turn:
the codec reconstructs the batch (a random number of codebooks with quantizer dropout);
the discriminators take an Adam step on their adversarial loss (real vs the detached
reconstruction); then the generator's losses are taken against the updated
discriminators (adversarial, feature matching, mel losses, waveform L1), each
differentiated with respect to the reconstruction and combined by the loss balancer;
that gradient plus the RVQ's commitment loss is sent back through the codec for its
own Adam step. The codebooks move by their EMA rule inside the same step. Before step
codec.adversarial_start the codec's balanced losses are only the reconstruction ones.

The task's params are {"generator", "discriminator"}, each with an optimizer state of its
own (optimizer_groups); its model state is {"codebooks", "balancer"} (and msd's spectral-norm
vectors, "spectral"), statistics moved by their own rules, and the params' EMA averages the
codebooks too (ema_state). train/loss is the balancer's effective loss (sum of each loss
times its scale; the hinge term makes it negative at times). Eval reports, per target
bandwidth, SI-SNR and mel distance on the eval split and the codes' entropy (the bitrate an
entropy coder would approach), and writes original and decoded WAVs and spectrograms of a few utterances.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxmodels.codec as codec_lib
from jaxmodels.codec import Encodec, losses, quantization, speechtokenizer
from jaxmodels.codec.hifigan_discriminator import DISCRIMINATORS, MultipleDiscriminator
from trainers import sharding
from trainers.cli import read_weights
from trainers.config import ConfigError
from trainers.data import speech
from trainers.data.extracted import ExtractedFrames
from trainers.data.speech import AudioDataConfig
from trainers.evaluators import fidelity
from trainers.tasks import SplitSources
from trainers.tasks._waveform import AudioCrop, eval_examples, masked_mean, write_examples

CODEC_LOSSES = ("adv", "feat", "l1", "mel", "msspec", "logmel")


@dataclass
class CodecConfig:
    """Neural audio codec (task: codec): training crops, losses and their balance, the discriminator.

    Defaults are AudioCraft's compression solver (config/solver/compression/default.yaml).
    """

    segment_seconds: float = 1.0  # random training crops
    # Weights of the balanced losses (adv, feat: adversarial and feature-matching losses of the
    # discriminators; l1: waveform; mel: log-mel L1; msspec: multi-scale mel; logmel: HiFi-GAN's
    # log-magnitude mel L1 at logmel_resolutions).
    loss_weights: dict[str, float] = field(
        default_factory=lambda: {"adv": 4.0, "feat": 4.0, "l1": 0.1, "mel": 0.0, "msspec": 2.0}
    )
    balance_grads: bool = True  # False: a plain weighted sum of the losses
    # Steps before adv and feat reach the codec (VQGAN's disc_start; AudioCraft: 0). The
    # discriminator trains from the start, so its gradients mean something when they do.
    adversarial_start: int = 0
    balancer_total_norm: float = 1.0
    balancer_ema_decay: float = 0.999
    commitment_weight: float = 1.0  # the RVQ's commitment loss, outside the balancer
    quantizer_dropout: bool = True  # train each batch with a random number of codebooks
    # The discriminators: msstft (EnCodec's multi-scale STFT, the disc_* fields), mpd and msd
    # (HiFi-GAN's multi-period and multi-scale ones); their losses' form (hinge as AudioCraft,
    # lsgan as HiFi-GAN) and how sub-discriminators combine (mean as AudioCraft, sum as HiFi-GAN).
    discriminators: list[str] = field(default_factory=lambda: ["msstft"])
    adversarial_loss: str = "hinge"
    adversarial_reduction: str = "mean"
    disc_periods: list[int] = field(default_factory=lambda: [2, 3, 5, 7, 11])
    disc_scales: int = 3
    disc_channel_divisor: int = 1  # mpd and msd narrowed (1: HiFi-GAN's widths; 2, 4 or 8)
    disc_filters: int = 32
    disc_n_ffts: list[int] = field(default_factory=lambda: [1024, 2048, 512, 256, 128])
    disc_hop_lengths: list[int] = field(default_factory=lambda: [256, 512, 128, 64, 32])
    disc_win_lengths: list[int] = field(default_factory=lambda: [1024, 2048, 512, 256, 128])
    disc_negative_slope: float = 0.3
    msspec_range: tuple[int, int] = (6, 11)  # n_fft = 2^6 .. 2^10
    # logmel's [n_fft, hop, weight] (SpeechTokenizer's trainer; 80 mels, f_min 0 there)
    logmel_resolutions: list[list[float]] = field(
        default_factory=lambda: [[1024, 240, 45.0], [512, 120, 1.0], [256, 60, 1.0], [128, 30, 1.0]]
    )
    n_mels: int = 64
    f_min: float = 64.0
    eval_examples: int = 4  # eval utterances written as WAVs and spectrograms
    # SpeechTokenizer's semantic distillation (a model with semantic_dimension): the first
    # quantizer's output, projected, is pulled towards the teacher's features of the same frames
    # by the D-axis loss, outside the balancer as the commitment loss. The features are what
    # `trainers.extract units --features` wrote to this folder, one <split>/ per split (the
    # released models' teacher: HuBERT Base, --layer avg).
    semantic_features: str | None = None
    distill_weight: float = 120.0  # upstream's distill_loss_lambda

    def __post_init__(self):
        unknown = sorted(set(self.loss_weights) - set(CODEC_LOSSES))
        if unknown:
            raise ConfigError(f"codec.loss_weights: unknown loss {unknown[0]!r}; valid: {', '.join(CODEC_LOSSES)}")
        unknown = sorted(set(self.discriminators) - set(DISCRIMINATORS))
        if unknown or not self.discriminators:
            what = f"unknown kind {unknown[0]!r}" if unknown else "none given"
            raise ConfigError(f"codec.discriminators: {what}; valid: {', '.join(DISCRIMINATORS)}")
        if self.adversarial_loss not in losses.ADVERSARIAL:
            raise ConfigError(
                f"codec.adversarial_loss: {self.adversarial_loss!r}; valid: {', '.join(losses.ADVERSARIAL)}"
            )
        if self.adversarial_reduction not in losses.REDUCTIONS:
            raise ConfigError(
                f"codec.adversarial_reduction: {self.adversarial_reduction!r}; valid: {', '.join(losses.REDUCTIONS)}"
            )
        if any(len(r) != 3 for r in self.logmel_resolutions):
            raise ConfigError("codec.logmel_resolutions: each entry is [n_fft, hop, weight]")


SECTIONS = {"data": AudioDataConfig, "codec": CodecConfig}


class CodecTask(SplitSources):
    optimizer_groups = ("generator", "discriminator")
    ema_state = ("codebooks",)  # the codec's EMA holds its codebooks too, as AudioCraft's over the model's buffers

    def __init__(self, cfg):
        self.cfg = cfg
        c = cfg.codec
        self.config = codec_lib.config(cfg.model.name, **cfg.model.args)
        if self.config.channels != 1:
            raise ValueError(
                f"task codec reads mono audio; model {cfg.model.name} has channels={self.config.channels}"
            )
        self.weights = {k: v for k, v in c.loss_weights.items() if v > 0}
        if not self.weights:
            raise ValueError("codec.loss_weights: at least one loss needs a positive weight")
        dtype = jnp.dtype(cfg.train.compute_dtype)
        self.model = Encodec(self.config, dtype)
        stft = dict(
            filters=c.disc_filters,
            n_ffts=tuple(c.disc_n_ffts),
            hop_lengths=tuple(c.disc_hop_lengths),
            win_lengths=tuple(c.disc_win_lengths),
            negative_slope=c.disc_negative_slope,
        )
        self.discriminator = MultipleDiscriminator(
            tuple(c.discriminators), stft, tuple(c.disc_periods), c.disc_scales, dtype, c.disc_channel_divisor
        )
        sr = self.config.sample_rate
        train_features, eval_features = self._teacher_features()
        # Crops start on a frame only where the teacher's frames need it; elsewhere anywhere, as
        # EnCodec's (the TTS demo's codec: docs/tts.md).
        hop = self.config.hop_length if train_features is not None else 1
        self.train_transform = AudioCrop(cfg, sr, int(c.segment_seconds * sr), True, hop, train_features)
        self.eval_transform = AudioCrop(cfg, sr, int(cfg.data.max_seconds * sr), False, hop, eval_features)
        self._reconstruct = jax.jit(self._reconstruct_all)

    def _teacher_features(self):
        """The extracted teacher features of the train and eval splits (None without distillation)."""
        c, cfg = self.cfg.codec, self.config
        if c.semantic_features is None:
            return None, None
        if not cfg.semantic_dimension:
            raise ConfigError(
                f"codec.semantic_features: model {self.cfg.model.name} has no semantic projection "
                "(semantic_dimension; the speechtokenizer_* models have one)"
            )
        found = []
        for split in (self.cfg.data.train_split, self.cfg.data.eval_split):
            frames = ExtractedFrames(os.path.join(c.semantic_features, split))
            if frames.what != "features" or frames.width() != cfg.semantic_dimension:
                raise ConfigError(
                    f"codec.semantic_features: {c.semantic_features}/{split} holds {frames.what} of width "
                    f"{frames.width()}; distillation needs features of width {cfg.semantic_dimension} (--features)"
                )
            if frames.frame_rate != cfg.frame_rate:
                raise ConfigError(
                    f"codec.semantic_features: the teacher's frames come at {frames.frame_rate:g} Hz, "
                    f"the codec's at {cfg.frame_rate} Hz"
                )
            found.append(frames)
        return tuple(found)

    # -- data -------------------------------------------------------------------------
    def make_source(self, split):
        return speech.SpeechSource(self.cfg, split)

    def example_batch(self, n):
        length = self.train_transform.length
        batch = {
            "audio": np.zeros((n, length), np.float32),
            "audio_length": np.full((n,), length, np.int32),
            "mask": np.ones((n,), np.float32),
        }
        if self.cfg.codec.semantic_features is not None:
            frames = length // self.config.hop_length
            batch["semantic"] = np.zeros((n, frames, self.config.semantic_dimension), np.float32)
            batch["semantic_frames"] = np.full((n,), frames, np.int32)
        return batch

    # -- model ------------------------------------------------------------------------
    def init(self, rng, batch):
        c = self.config
        k_gen, k_disc, k_codes = jax.random.split(rng, 3)
        x = jnp.asarray(batch["audio"])[..., None]
        discriminator = self.discriminator.init(k_disc, x)
        state = {
            "codebooks": quantization.init_state(k_codes, c.n_q, c.bins, c.dimension, c.kmeans_init),
            "balancer": losses.balancer_init(self.weights),
        }
        if "spectral" in discriminator:  # msd's power-iteration vectors
            state["spectral"] = discriminator["spectral"]
        return {
            "params": {"generator": self.model.init(k_gen, x)["params"], "discriminator": discriminator["params"]},
            "state": state,
        }

    def convert_weights(self, state_dict):
        """A released EnCodec: the generator and its codebooks (it has no discriminator)."""
        codec = codec_lib.from_torch(state_dict, self.config)
        return {
            "params": {"generator": jax.device_get(codec.params)},
            "state": {"codebooks": jax.device_get(codec.codebooks)},
        }

    def _reconstruction_losses(self):
        """The balanced losses that compare y with x directly, each per example."""
        c, sr = self.cfg.codec, self.config.sample_rate
        candidates = {
            "l1": lambda y, x: losses.per_example(jnp.abs(y - x)),
            "mel": lambda y, x: losses.mel_l1_loss(y, x, sr, n_mels=c.n_mels, f_min=c.f_min),
            "msspec": lambda y, x: losses.multi_scale_mel_loss(
                y, x, sr, *c.msspec_range, n_mels=c.n_mels, f_min=c.f_min
            ),
            "logmel": lambda y, x: losses.log_mel_l1_loss(
                y, x, sr, [(int(n), int(h), w) for n, h, w in c.logmel_resolutions], c.n_mels, c.f_min
            ),
        }
        return {k: f for k, f in candidates.items() if k in self.weights}

    def train_update(self, tx, params, opt_state, model_state, batch, rng, step):
        c, cfg = self.cfg.codec, self.config
        x = batch["audio"][..., None]
        mask = batch["mask"]
        k_quant, k_drop = jax.random.split(rng)
        n_active = jax.random.randint(k_drop, (), 1, cfg.n_q + 1) if c.quantizer_dropout else cfg.n_q

        def generate(generator):
            emb = self.model.apply({"params": generator}, x, method=Encodec.encode_latent)
            q, _, commit, codebooks, layers = quantization.quantize_train(
                model_state["codebooks"],
                emb,
                n_active,
                k_quant,
                cfg.decay,
                kmeans_iters=cfg.kmeans_iters,
                threshold_ema_dead_code=cfg.threshold_ema_dead_code,
            )
            y = self.model.apply({"params": generator}, q, method=Encodec.decode_latent)[:, : x.shape[1]]
            distill = jnp.zeros(())
            if "semantic" in batch:
                distill = self._distillation(generator, emb, layers[0], batch)
            return (y, commit, distill), codebooks

        (y, commit, distill), generator_vjp, codebooks = jax.vjp(generate, params["generator"], has_aux=True)

        # The discriminator first, on the detached reconstruction, then the audio (msd's
        # spectral norm takes its power iteration on the first, once a step).
        spectral = {"spectral": model_state["spectral"]} if "spectral" in model_state else {}
        kind, reduction = c.adversarial_loss, c.adversarial_reduction

        def discriminator_loss(d):
            (fake, _), new = self.discriminator.apply(
                {"params": d, **spectral}, jax.lax.stop_gradient(y), mutable=["spectral"]
            )
            real, _ = self.discriminator.apply({"params": d, **new}, x)
            return masked_mean(losses.discriminator_loss(fake, real, kind, reduction), mask), new

        adversarial = [k for k in ("adv", "feat") if k in self.weights]
        discriminator, d_opt = params["discriminator"], opt_state["discriminator"]
        d_loss, d_grads = jnp.zeros(()), jax.tree.map(jnp.zeros_like, discriminator)
        if adversarial:  # without adversarial losses the discriminator is not trained
            (d_loss, spectral), d_grads = jax.value_and_grad(discriminator_loss, has_aux=True)(discriminator)
            d_updates, d_opt = tx.update(d_grads, d_opt, discriminator)
            discriminator = optax.apply_updates(discriminator, d_updates)

        # The generator's losses, each one's gradient with respect to the reconstruction
        # (the balancer needs them apart); the adversarial ones against the updated discriminator.
        values, grads = {}, {}
        if adversarial:
            variables = {"params": discriminator, **spectral}
            real_fmaps = jax.lax.stop_gradient(self.discriminator.apply(variables, x)[1])

            def adversarial_losses(y):
                logits, fmaps = self.discriminator.apply(variables, y)
                adv, feat = losses.generator_losses(logits, fmaps, real_fmaps, kind, reduction)
                both = {"adv": masked_mean(adv, mask), "feat": masked_mean(feat, mask)}
                return {k: both[k] for k in adversarial}

            adv_values, adv_vjp = jax.vjp(adversarial_losses, y)
            values.update(adv_values)
            for k in adversarial:
                grads[k] = adv_vjp({j: jnp.asarray(float(j == k), v.dtype) for j, v in adv_values.items()})[0]
        for k, loss in self._reconstruction_losses().items():
            values[k], grads[k] = jax.value_and_grad(lambda y, loss=loss: masked_mean(loss(y, x), mask))(y)
        on = step >= c.adversarial_start
        weights = {k: jnp.where(on, w, 0.0) if k in adversarial else w for k, w in self.weights.items()}
        out_grad, effective, balancer, shares = losses.balance(
            grads,
            values,
            weights,
            model_state["balancer"],
            mask,
            c.balancer_total_norm,
            c.balancer_ema_decay,
            balance_grads=c.balance_grads,
        )
        (g_grads,) = generator_vjp(
            (
                out_grad.astype(y.dtype),
                jnp.asarray(c.commitment_weight, commit.dtype),
                jnp.asarray(c.distill_weight, distill.dtype),
            )
        )
        g_updates, g_opt = tx.update(g_grads, opt_state["generator"], params["generator"])
        generator = optax.apply_updates(params["generator"], g_updates)

        metrics = {
            "train/loss": effective,
            "train/d_loss": d_loss,
            "train/commitment": commit,
            **({"train/distill": distill} if "semantic" in batch else {}),
            "train/grad_norm": optax.tree.norm(g_grads),
            "train/d_grad_norm": optax.tree.norm(d_grads),
            "train/bitrate_kbps": n_active * quantization.bandwidth_per_quantizer(cfg.bins, cfg.frame_rate) / 1000,
            "train/skipped": jnp.sum(1.0 - mask),
        }
        metrics.update({f"train/{k}": v for k, v in values.items()})
        metrics.update({f"train/share_{k}": v for k, v in shares.items()})
        return (
            {"generator": generator, "discriminator": discriminator},
            {"generator": g_opt, "discriminator": d_opt},
            {"codebooks": codebooks, "balancer": balancer, **spectral},
            metrics,
        )

    def _distillation(self, generator, emb, first, batch):
        """The D-axis loss of the projected first quantizer output (straight-through to the
        encoder, as upstream's per-layer quantizer) against the teacher's frames of the crop."""
        first = emb + jax.lax.stop_gradient(first - emb)
        feature = self.model.apply({"params": generator}, first, method=Encodec.semantic_projection)
        valid = jnp.arange(feature.shape[1])[None] < batch["semantic_frames"][:, None]
        per_example = losses.d_axis_distillation_loss(feature, batch["semantic"], valid)
        return masked_mean(per_example, batch["mask"])

    # -- evaluation ---------------------------------------------------------------------
    def _reconstruct_all(self, params, audio):
        """(codes at the highest bandwidth (B, K, frames), {bandwidth: waveform (B, T)})."""
        cfg = self.config
        emb = self.model.apply({"params": params["generator"]}, audio[..., None], method=Encodec.encode_latent)
        embed = params["codebooks"]["embed"]
        out = {}
        n_max = max(cfg.num_quantizers(bw) for bw in cfg.target_bandwidths)
        codes = quantization.encode(embed, emb, n_max)
        for bw in cfg.target_bandwidths:
            q = quantization.decode(embed, codes[: cfg.num_quantizers(bw)])
            out[bw] = self.model.apply({"params": params["generator"]}, q, method=Encodec.decode_latent)[
                :, : audio.shape[1], 0
            ]
        return codes.transpose(1, 0, 2), out

    def codec(self, params):
        """The Codec (encode/decode) of this task's params."""
        return codec_lib.Codec(self.config, {"params": params["generator"], "codebooks": params["codebooks"]})

    def eval_outputs(self, params, batch):
        c, cfg = self.cfg.codec, self.config
        audio, lengths = batch["audio"], batch["audio_length"]
        codes, decoded = self._reconstruct_all(params, audio)
        out = {"codes": codes, "code_frames": -(-lengths // cfg.hop_length)}
        distances = fidelity.mel_distances(decoded, audio, lengths, cfg.sample_rate, c.n_mels, c.f_min)
        for bw, y in decoded.items():
            out[f"si_snr_{bw:g}kbps"] = fidelity.si_snr(y, audio, lengths)
            out[f"mel_distance_{bw:g}kbps"] = distances[bw]
        if "semantic" in batch:
            first = params["codebooks"]["embed"][0][codes[:, 0]]
            feature = self.model.apply({"params": params["generator"]}, first, method=Encodec.semantic_projection)
            valid = jnp.arange(feature.shape[1])[None] < batch["semantic_frames"][:, None]
            out["distill"] = losses.d_axis_distillation_loss(feature, batch["semantic"], valid)
        return out

    def eval_metrics(self, outputs):
        cfg = self.config
        metrics = {
            k: float(np.mean(v)) for k, v in outputs.items() if k.startswith(("si_snr", "mel_distance", "distill"))
        }
        entropies = fidelity.codebook_entropies(outputs["codes"], outputs["code_frames"], cfg.bins)
        for bw in cfg.target_bandwidths:
            rates = fidelity.bitrates(entropies, cfg.num_quantizers(bw), cfg.bins, cfg.frame_rate)
            metrics.update({f"{name}_{bw:g}kbps": value for name, value in rates.items()})
        return metrics

    def generate(self, params, mesh):
        """The first codec.eval_examples eval utterances, decoded at every bandwidth (for the artefacts)."""
        audio, lengths = eval_examples(self, self.cfg.codec.eval_examples)
        _, decoded = self._reconstruct(sharding.host_copy(params), audio)
        return {}, {
            "examples_original": audio,
            "examples_length": lengths,
            **{f"examples_{bw:g}kbps": np.asarray(y) for bw, y in decoded.items()},
        }

    def write_artifacts(self, workdir, outputs, step):
        cfg = self.config
        names = ["original"] + [f"{bw:g}kbps" for bw in cfg.target_bandwidths]

        def log_mel(wav):
            return losses.mel_spectrogram(jnp.asarray(wav)[None, :, None], cfg.sample_rate, 512, 160, 400, 64)[0, 0]

        write_examples(workdir, outputs, names, cfg.sample_rate, log_mel, step)


def load_codec(path: str, model: str = "encodec_24khz"):
    """A Codec: a codec run's directory (codec_of_run), or a weights file (official_codec)."""
    return codec_of_run(path) if os.path.isdir(path) else official_codec(path, model)


def codec_of_run(workdir: str, purpose: str = "codec"):
    """The Codec of a codec run's inference params; a SpeechTokenizer run's teacher features,
    which only its training reads, need not be there."""
    from trainers.runs import load_run

    no_teacher = lambda cfg: dataclasses.replace(cfg.codec, semantic_features=None)  # noqa: E731
    trainer, params = load_run(workdir, "codec", purpose, codec=no_teacher)
    return trainer.task.codec(params)


def official_codec(weights: str, model: str):
    """A Codec from official EnCodec or SpeechTokenizer weights; `model` names their config or is
    a JSON file of it (EncodecConfig fields, or SpeechTokenizer's released config.json)."""
    if model.endswith(".json"):
        with open(model) as f:
            config = json.load(f)
        if "semantic_dimension" in config:
            config = speechtokenizer.encodec_config(config)
    else:
        config = codec_lib.config(model)
    return codec_lib.from_torch(read_weights(weights, "codec weights"), config)


TASK = CodecTask
