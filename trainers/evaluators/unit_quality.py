"""How well k-means units of speech frames match the phones spoken: the unit quality metrics
of the HuBERT paper (Hsu et al. 2021, section IV-C).

Over the frames of the task's evaluation split, y a frame's phone (the corpus's "phones":
eSpeak NG's phoneme events, pauses one more phone) and z its unit:

    phone purity    E_z max_y p(y | z)     how much a unit says about the phone
    cluster purity  E_y max_z p(z | y)     how much a phone keeps to one unit
    PNMI            I(y; z) / H(y)         the phone's uncertainty the unit removes

The units are k-means (jaxmodels.speechlm, `clusters`) of frame features fitted on the
first fit_utterances training utterances: with `features: model`, hidden state `layer` of
the pretraining task's encoder with the params evaluated (metrics layer<L>_pnmi, ...); with
`features: mfcc`, HuBERT's first-iteration MFCCs (mfcc_pnmi, ...), the baseline. With
`features: codes` (the codec task) the units are a codec's codes themselves, those of
quantizer `layer` (0: RVQ-1; metrics rvq<layer + 1>_pnmi, ...): SpeechTokenizer distils
the phonetic content into RVQ-1, which EnCodec's RVQ-1 does not hold apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels import speechlm, ssl
from jaxmodels.asr import mfcc
from trainers.config import ConfigError, EvalConfig
from trainers.data import speech


@dataclass
class UnitQualityConfig(EvalConfig):
    features: Literal["model", "mfcc", "codes"] = "model"
    layer: int = 6  # model: the hidden state (0: the encoder's input); codes: the quantizer (0: RVQ-1)
    clusters: int = 100
    fit_utterances: int = 1000
    seed: int = 0


def frame_phones(phones, frames: int, rate: float) -> list:
    """The phone at the centre of each of `frames` frames at `rate` Hz ([[start, phone], ...])."""
    starts = np.array([s for s, _ in phones])
    index = np.searchsorted(starts, (np.arange(frames) + 0.5) / rate, side="right") - 1
    return [phones[max(i, 0)][1] for i in index]


def unit_quality(phones, units) -> dict:
    """{"phone_purity", "cluster_purity", "pnmi"} of paired frame labels (phones: any hashable
    labels; units: ints)."""
    names, y = np.unique(np.asarray(phones), return_inverse=True)
    z = np.asarray(units)
    joint = np.zeros((len(names), z.max() + 1))
    np.add.at(joint, (y, z), 1.0)
    joint /= joint.sum()
    p_y, p_z = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mutual = (joint[nz] * np.log(joint[nz] / np.outer(p_y, p_z)[nz])).sum()
    entropy = -(p_y[p_y > 0] * np.log(p_y[p_y > 0])).sum()
    return {
        "phone_purity": float(joint.max(0).sum()),
        "cluster_purity": float(joint.max(1).sum()),
        "pnmi": float(mutual / entropy),
    }


def _phones(records, split: str) -> list:
    missing = [r["key"] for r in records if "phones" not in r]
    if missing:
        raise ConfigError(
            f"evals: unit_quality needs each record's phones ([[start, phone], ...]); {len(missing)} of the "
            f"{split} split have none (first: {missing[0]}). The built-in corpus records them: rebuild it"
        )
    return [r["phones"] for r in records]


class UnitQuality:
    def __init__(self, cfg: UnitQualityConfig, task):
        from trainers.tasks._pretraining import SpeechPretraining

        if cfg.features == "model" and not isinstance(task, SpeechPretraining):
            raise ConfigError("evals: unit_quality with features model scores a pretraining task's encoder")
        if cfg.features == "codes" and task.cfg.task != "codec":
            raise ConfigError("evals: unit_quality with features codes scores a codec task's codes")
        self.cfg, self.task = cfg, task
        self.sample_rate = speech.SAMPLE_RATE
        self.fit_records = task.train_source().records[: cfg.fit_utterances]
        self.eval_records = task.eval_source().records
        self.phones = _phones(self.eval_records, "evaluation")
        _phones(self.fit_records, "training")
        self.resample = task.cfg.data.resample
        if cfg.features == "model":
            encoder = task.encoder.clone(norm_valid_frames=True)  # each utterance's states as it alone gives them
            if not 0 <= cfg.layer <= encoder.num_hidden_layers:
                raise ConfigError(
                    f"evals: unit_quality layer {cfg.layer}: the encoder has 0..{encoder.num_hidden_layers}"
                )
            self.rate = speech.SAMPLE_RATE / np.prod(encoder.conv_stride)
            self.prefix = f"layer{cfg.layer}_"

            def encode(params, audio, lengths):
                paddings = (jnp.arange(audio.shape[1])[None] >= lengths[:, None]).astype(jnp.float32)
                hidden = encoder.apply({"params": params["encoder"]}, audio, paddings, method="hidden_states")
                frames = ssl.output_lengths(lengths, encoder.conv_kernel, encoder.conv_stride)
                return hidden[cfg.layer], frames

        elif cfg.features == "codes":
            from jaxmodels.codec import Encodec, quantization

            codec = task.config
            if not 0 <= cfg.layer < codec.n_q:
                raise ConfigError(
                    f"evals: unit_quality layer {cfg.layer}: the codec has quantizers 0..{codec.n_q - 1}"
                )
            self.rate, self.prefix, self.sample_rate = codec.frame_rate, f"rvq{cfg.layer + 1}_", codec.sample_rate

            def encode(params, audio, lengths):
                emb = task.model.apply({"params": params["generator"]}, audio[..., None], method=Encodec.encode_latent)
                codes = quantization.encode(params["codebooks"]["embed"], emb, cfg.layer + 1)[cfg.layer]
                return codes, -(-lengths // codec.hop_length)

        else:
            self.rate, self.prefix = 100.0, "mfcc_"

            def encode(params, audio, lengths):
                return mfcc(audio, lengths)

        self.encode = jax.jit(encode)
        self._result = None

    def _features(self, params, records) -> list:
        """Each utterance's frames (T, D), in batches padded to one length."""
        waves = [speech.read_audio(r["source"], self.sample_rate, self.resample) for r in records]
        longest, out = max(len(w) for w in waves), []
        for start in range(0, len(waves), 32):
            audio, lengths = speech.pad_waveforms(waves[start : start + 32], longest)
            feats, frames = self.encode(params, jnp.asarray(audio), jnp.asarray(lengths))
            out += [f[:n] for f, n in zip(np.asarray(feats), np.asarray(frames))]
        return out

    def __call__(self, outputs, params):
        if self._result is not None:  # the MFCC units do not depend on the params
            return self._result, {}
        if self.cfg.features == "codes":
            units = self._features(params, self.eval_records)
        else:
            points = np.concatenate(self._features(params, self.fit_records)).astype(np.float32)
            centroids = speechlm.fit(jax.random.PRNGKey(self.cfg.seed), points, self.cfg.clusters, batch_size=4096)
            units = [
                np.argmin(((f.astype(np.float32)[:, None] - np.asarray(centroids)[None]) ** 2).sum(-1), 1)
                for f in self._features(params, self.eval_records)
            ]
        labels = []
        for frames, phones in zip(units, self.phones):
            labels += frame_phones(phones, len(frames), self.rate)
        metrics = {self.prefix + k: v for k, v in unit_quality(labels, np.concatenate(units)).items()}
        if self.cfg.features == "mfcc":
            self._result = metrics
        return metrics, {}


CONFIG, EVALUATOR = UnitQualityConfig, UnitQuality
