"""CosyVoice's flow-matching decoder trained as upstream's MaskedDiffWithXvec (task: cosyvoice_flow),
on the S3 tokens and x-vectors that trainers.extract writes:

    python -m trainers.extract s3tokens CONFIG --s3tokenizer speech_tokenizer_v1.pt --workdir TOKENS
    python -m trainers.speaker CONFIG --out SPEAKER.npz
    python -m trainers.extract xvectors CONFIG --campplus campplus_cn_common.bin --workdir XVECTORS
    python -m trainers.train CONFIG --workdir runs/flow     # data.tokens: TOKENS, data.xvectors: XVECTORS

Each example is a whole utterance: its audio, its tokens and its x-vector, padded to
data.max_seconds (or to its duration bucket under data.batch_seconds, as upstream's dynamic
batches). The step computes the mel (Matcha-TTS's features, upstream's feat_extractor) and
the loss of MaskedDiffWithXvec.forward: half the rows conditioned on a random prefix of their
own mel, the conditions of a training_cfg_rate share dropped, the velocity's squared error over
the real frames (with model.args.prior_loss_weight, plus Matcha-TTS's prior loss:
`train/flow_loss`, `train/prior_loss`, `eval/prior_loss`). Eval reports that loss at fixed noise
over the eval split, `eval/noise_slope` (the velocity's least-squares slope on the noise it
starts from at t = 0: -1 ideally, 0 where the estimator ignores its input and samples stay
noise; Flow.noise_response), and for the first flow.eval_examples utterances long enough, the
mel generated from their tokens after flow.prompt_seconds of their own tokens and mel
(`eval/mel_distance`: its log-mel L1 against the real mel), drawn in spectrograms.png.
"""

import math
import os
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.cosyvoice import flow, hift
from trainers import sharding
from trainers.data import speech
from trainers.tasks import SplitSources, _cosyvoice


@dataclass
class FlowTaskConfig:
    """The features (Matcha-TTS's mel_spectrogram; the bins are the model's output_size) and the
    eval generations."""

    n_fft: int = 1024
    win_length: int = 1024
    f_min: float = 0.0
    f_max: float = 8000.0
    eval_examples: int = 4
    prompt_seconds: float = 1.0  # an eval generation's prompt: the utterance's start
    generate_seconds: float = 1.0  # and what it generates after it (shorter utterances are not used)


SECTIONS = {"data": _cosyvoice.CosyVoiceDataConfig, "flow": FlowTaskConfig}


class Utterance:
    """Record -> {audio, audio_length, tokens, token_length, xvector, mask}, padded to `seconds`;
    an unreadable or too long utterance is an error, or under data.on_bad_audio=skip a row of mask 0."""

    def __init__(self, cfg, model: flow.FlowConfig, tokens, xvectors, seconds: float):
        self.tokens, self.xvectors, self.rate = tokens, xvectors, model.sample_rate
        self.on_bad_audio, self.resample = cfg.data.on_bad_audio, cfg.data.resample
        self.token_frames = math.ceil(seconds * model.input_frame_rate)
        if model.token_mel_ratio:  # CosyVoice 2's: whole tokens' frames, token_mel_ratio of them a token
            self.samples = model.mel_frames(self.token_frames) * model.hop_length
        else:
            self.samples = int(seconds * model.sample_rate) // model.hop_length * model.hop_length
        self.width = model.spk_embed_dim

    def __call__(self, record, rng):
        out = {
            "audio": np.zeros(self.samples, np.float32),
            "audio_length": np.int32(0),
            "tokens": np.zeros(self.token_frames, np.int32),
            "token_length": np.int32(0),
            "xvector": np.zeros(self.width, np.float32),
            "mask": np.float32(0.0),
        }
        try:
            audio = speech.read_audio(record["source"], self.rate, self.resample)
            if len(audio) > self.samples:
                raise ValueError(f"{record['source']}: {len(audio) / self.rate:.2f} s, longer than data.max_seconds")
        except ValueError:
            if self.on_bad_audio == "skip":
                return out
            raise
        tokens = self.tokens[record["key"]][: self.token_frames]
        out["audio"][: len(audio)] = audio
        out["tokens"][: len(tokens)] = tokens
        out.update(audio_length=np.int32(len(audio)), token_length=np.int32(len(tokens)), mask=np.float32(1.0))
        out["xvector"][:] = _cosyvoice.xvector(self.xvectors, record["key"], self.width)
        return out


class FlowTask(SplitSources):
    def __init__(self, cfg):
        self.cfg = cfg
        d = cfg.data
        self.config = flow.config(cfg.model.name, **cfg.model.args)
        self.model = flow.Flow(self.config, jnp.dtype(cfg.train.compute_dtype), cfg.train.remat)
        transforms = []
        for split in (d.train_split, d.eval_split):
            m = self.config
            tokens, xvectors = _cosyvoice.extracted(cfg, split, m.vocab_size, m.input_frame_rate)
            transforms.append(Utterance(cfg, self.config, tokens, xvectors, d.max_seconds))
        self.train_transform, self.eval_transform = transforms
        self._generate = jax.jit(self._generate_mel)

    def make_source(self, split):
        return speech.SpeechSource(self.cfg, split)

    def length_buckets(self):
        m = self.config

        def crop(samples_16k):
            seconds = samples_16k / speech.SAMPLE_RATE
            return {
                "audio": int(seconds * m.sample_rate) // m.hop_length * m.hop_length,
                "tokens": math.ceil(seconds * m.input_frame_rate),
            }

        return speech.duration_buckets(self.cfg.data, self.train_source(), crop)

    def example_batch(self, n):
        t = self.train_transform
        return {
            "audio": np.zeros((n, t.samples), np.float32),
            "audio_length": np.full((n,), t.samples, np.int32),
            "tokens": np.zeros((n, t.token_frames), np.int32),
            "token_length": np.full((n,), t.token_frames, np.int32),
            "xvector": np.ones((n, t.width), np.float32),
            "mask": np.ones((n,), np.float32),
        }

    def mel(self, audio):
        c, m = self.cfg.flow, self.config
        return hift.mel_spectrogram(
            audio, m.sample_rate, c.n_fft, m.hop_length, c.win_length, m.output_size, c.f_min, c.f_max
        )

    def _inputs(self, batch):
        """The model's inputs of a batch; rows of mask 0 have no frames and no tokens."""
        real = batch["mask"] > 0
        feat_len = jnp.where(real, batch["audio_length"] // self.config.hop_length, 0)
        token_len = jnp.where(real, batch["token_length"], 0)
        return batch["tokens"], token_len, self.mel(batch["audio"]), feat_len, batch["xvector"]

    def init(self, rng, batch):
        return self.model.init(rng, *self._inputs(batch))

    def convert_weights(self, state_dict):
        """A released flow.pt."""
        return flow.from_torch(state_dict, self.config)

    def loss(self, params, batch, rng, step):
        loss, flow_loss, prior_loss = self.model.apply(
            {"params": params}, rng, *self._inputs(batch), method=flow.Flow.losses
        )
        metrics = {"train/loss": loss, "train/skipped": jnp.sum(1.0 - batch["mask"])}
        if self.config.prior_loss_weight:
            metrics.update({"train/flow_loss": flow_loss, "train/prior_loss": prior_loss})
        return loss, metrics

    def eval_outputs(self, params, batch):
        inputs = self._inputs(batch)
        errors, prior = self.model.apply({"params": params}, jax.random.key(0), *inputs, method=flow.Flow.row_errors)
        scored = self.model.apply({"params": params}, inputs[1], inputs[3], method=flow.Flow.scored_frames)
        vz, zz = self.model.apply({"params": params}, jax.random.key(1), *inputs, method=flow.Flow.noise_response)
        values = scored * self.config.output_size
        return {"error": errors, "prior": prior, "values": values, "noise_vz": vz, "noise_zz": zz}

    def eval_metrics(self, outputs):
        values = max(float(np.sum(outputs["values"])), 1.0)
        metrics = {
            "loss": float(np.sum(outputs["error"])) / values,
            "noise_slope": float(np.sum(outputs["noise_vz"])) / max(float(np.sum(outputs["noise_zz"])), 1.0),
        }
        if self.config.prior_loss_weight:
            metrics["prior_loss"] = 0.5 * float(np.sum(outputs["prior"])) / values
        return metrics

    # -- generation ---------------------------------------------------------------------
    def _generate_mel(self, params, tokens, prompt_tokens, prompt_feat, xvector):
        return self.model.apply(
            {"params": params},
            jax.random.key(0),
            tokens,
            prompt_tokens,
            prompt_feat,
            xvector,
            method=flow.Flow.inference,
        )

    def generate(self, params, mesh):
        """The mel of the first flow.eval_examples eval utterances that are long enough, generated from
        their tokens after a prompt of their start, beside their real mel."""
        c, m = self.cfg.flow, self.config
        prompt, length = round(c.prompt_seconds * m.input_frame_rate), round(c.generate_seconds * m.input_frame_rate)
        prompt_frames, frames = m.mel_frames(prompt), m.mel_frames(length)
        source, rows = self.eval_source(), []
        for i in range(len(source)):
            if len(rows) == c.eval_examples:
                break
            row = self.eval_transform(source[i], None)
            if row["mask"] > 0 and row["token_length"] >= prompt + length:
                rows.append(row)
        if not rows:
            return {}, {}
        batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        real = np.asarray(self.mel(jnp.asarray(batch["audio"])))[:, : prompt_frames + frames]
        real = np.pad(real, ((0, 0), (0, prompt_frames + frames - real.shape[1]), (0, 0)))
        generated = self._generate(
            sharding.host_copy(params),
            batch["tokens"][:, prompt : prompt + length],
            batch["tokens"][:, :prompt],
            real[:, :prompt_frames],
            batch["xvector"],
        )
        generated = np.asarray(generated)
        metrics = {"mel_distance": float(np.mean(np.abs(generated - real[:, prompt_frames:])))}
        return metrics, {"mel_real": real, "mel_generated": np.concatenate([real[:, :prompt_frames], generated], 1)}

    def write_artifacts(self, workdir, outputs, step):
        from trainers.pictures import spectrograms_png

        if "mel_real" not in outputs:
            return
        rows = []
        for i, (real, generated) in enumerate(zip(outputs["mel_real"], outputs["mel_generated"])):
            rows += [(f"utterance {i}, real", real), (f"utterance {i}, prompt + generated", generated)]
        spectrograms_png(os.path.join(workdir, "spectrograms.png"), rows, title=f"step {step}")


TASK = FlowTask
