"""HuBERT pretraining (task: hubert): masked prediction of k-means units of speech.

Each utterance's targets are k-means units of its frames (trainers.semantic): the first
iteration clusters MFCCs (39 dimensions at 100 Hz, every other unit a target at the
encoder's 50 Hz, as fairseq's label rate of 100), the second a layer of a trained encoder
(hubert.target_features: hubert, the transformers weights file in target_encoder). The
clusters are fitted on the first hubert.fit_utterances training utterances and every
utterance's units cached in hubert.targets_dir (<split>.npz, tokenizer.npz), reused while
the settings and the corpus are the same.

A step masks spans of the encoder's frames (ssl.span_mask: mask_prob, mask_length,
min_masks), replaces them with the learned embedding and scores every frame against the
classes (ssl.HubertPretraining); the loss is the cross-entropy on the masked frames (and,
weighted, on the others). Eval reports the same on the eval split with one fixed mask:
eval/masked_loss and eval/masked_accuracy. Batches by duration as the ctc task's
(data.batch_seconds).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels import ssl
from trainers import files, speech
from trainers.speech import AudioDataConfig
from trainers.tasks import SplitSources


@dataclass
class HubertConfig:
    """Targets, masking and the prediction head (fairseq's HuBERT Base settings by default)."""

    target_features: Literal["mfcc", "hubert"] = "mfcc"
    target_encoder: str = ""  # target_features hubert: transformers weights file, config.json beside it
    target_layer: int = 6
    clusters: int = 100
    fit_utterances: int = 1000
    targets_dir: str = "runs/hubert_targets"
    mask_prob: float = 0.8
    mask_length: int = 10
    min_masks: int = 2
    final_dim: int = 256
    logit_temp: float = 0.1
    masked_weight: float = 1.0
    unmasked_weight: float = 0.0


SECTIONS = {"data": AudioDataConfig, "hubert": HubertConfig}


class _Transform:
    """Record -> audio padded to data.max_seconds and its units padded with -1."""

    def __init__(self, max_samples: int, max_frames: int, units: dict, resample: bool):
        self.max_samples, self.max_frames, self.units, self.resample = max_samples, max_frames, units, resample

    def __call__(self, record, rng):
        samples = speech.read_audio(record["source"], resample=self.resample)[: self.max_samples]
        audio = np.zeros(self.max_samples, np.float32)
        audio[: len(samples)] = samples
        targets = np.full(self.max_frames, -1, np.int32)
        units = self.units[record["key"]][: self.max_frames]
        targets[: len(units)] = units
        return {"audio": audio, "audio_length": np.int32(len(samples)), "targets": targets, "mask": np.float32(1)}


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def _digest(records) -> str:
    return hashlib.sha256(json.dumps([[r["key"], r["source"]] for r in records]).encode()).hexdigest()


class HubertTask(SplitSources):
    def __init__(self, cfg):
        self.cfg = cfg
        h = cfg.hubert
        self.encoder = ssl.create(
            cfg.model.name, **cfg.model.args, dtype=jnp.dtype(cfg.train.compute_dtype), remat=cfg.train.remat
        )
        self.model = ssl.HubertPretraining(self.encoder, h.clusters, h.final_dim, h.logit_temp)
        self.max_samples = int(cfg.data.max_seconds * speech.SAMPLE_RATE)
        self.max_frames = self._frames(self.max_samples)
        self._tokenizer = None
        train_units = self._units(cfg.data.train_split, self.train_source())
        eval_units = self._units(cfg.data.eval_split, self.eval_source())
        self.train_transform = _Transform(self.max_samples, self.max_frames, train_units, cfg.data.resample)
        self.eval_transform = _Transform(self.max_samples, self.max_frames, eval_units, cfg.data.resample)

    def _frames(self, samples):
        return int(ssl.output_lengths(np.int64(samples), self.encoder.conv_kernel, self.encoder.conv_stride))

    # -- targets ----------------------------------------------------------------------
    def tokenizer(self):
        """The k-means tokenizer of the targets: the one cached in targets_dir when it was fitted
        with these settings on these utterances, else fitted now (and cached)."""
        from trainers.semantic import SemanticTokenizer

        if self._tokenizer is None:
            h = self.cfg.hubert
            records = self.train_source().records[: h.fit_utterances]
            meta = {**self._settings(), "clusters": h.clusters, "seed": self.cfg.seed, "fitted_on": _digest(records)}
            path, meta_path = (os.path.join(h.targets_dir, f"tokenizer.{ext}") for ext in ("npz", "json"))
            if os.path.isfile(path) and os.path.isfile(meta_path) and _read_json(meta_path) == meta:
                self._tokenizer = SemanticTokenizer.load(path)
            else:
                print(f"fitting {h.clusters} {h.target_features} clusters on {len(records)} utterances", flush=True)
                waves = [speech.read_audio(r["source"], resample=self.cfg.data.resample) for r in records]
                self._tokenizer = SemanticTokenizer(None, **self._settings()).fit(waves, h.clusters, self.cfg.seed)
                os.makedirs(h.targets_dir, exist_ok=True)
                self._tokenizer.save(path)
                files.write_text(meta_path, json.dumps(meta))
        return self._tokenizer

    def _settings(self):
        h = self.cfg.hubert
        if h.target_features == "mfcc":
            return {"features": "mfcc", "frame_rate": 100}
        return {"features": "hubert", "frame_rate": 50, "encoder": h.target_encoder, "layer": h.target_layer}

    def _units(self, split, source):
        """key -> the utterance's target units at the encoder's frame rate, cached per split."""
        records, h = source.records, self.cfg.hubert
        centroids = np.asarray(self.tokenizer().centroids)
        meta = {"centroids": hashlib.sha256(centroids.tobytes()).hexdigest(), "records": _digest(records)}
        path = os.path.join(h.targets_dir, f"{split}.npz")
        if os.path.isfile(path):
            with np.load(path) as f:
                if json.loads(str(f["meta"])) == meta:
                    return dict(zip(f["keys"].tolist(), np.split(f["units"], f["offsets"][1:-1])))
        tokenizer, units = self.tokenizer(), []
        for start in range(0, len(records), 64):
            part = records[start : start + 64]
            units += tokenizer([speech.read_audio(r["source"], resample=self.cfg.data.resample) for r in part])
        step = 2 if h.target_features == "mfcc" else 1  # MFCC units at 100 Hz: every other one at 50 Hz
        units = [np.asarray(u[::step], np.int32) for u in units]
        offsets = np.cumsum([0] + [len(u) for u in units])
        keys = np.array([r["key"] for r in records])
        os.makedirs(h.targets_dir, exist_ok=True)
        files.write_npz(path, keys=keys, units=np.concatenate(units), offsets=offsets, meta=json.dumps(meta))
        return dict(zip(keys.tolist(), units))

    # -- data -------------------------------------------------------------------------
    def make_source(self, split):
        return speech.SpeechSource(self.cfg, split)

    def length_buckets(self):
        crop = lambda samples: {"audio": samples, "targets": self._frames(samples)}  # noqa: E731
        return speech.duration_buckets(self.cfg.data, self.train_source(), crop)

    def example_batch(self, n):
        return {
            "audio": np.zeros((n, self.max_samples), np.float32),
            "audio_length": np.full((n,), self.max_samples, np.int32),
            "targets": np.zeros((n, self.max_frames), np.int32),
            "mask": np.ones((n,), np.float32),
        }

    # -- model ------------------------------------------------------------------------
    def init(self, rng, batch):
        return self.model.init({"params": rng}, batch["audio"][:, :400])

    def convert_weights(self, state_dict):
        """An encoder's transformers state_dict: the prediction head keeps its initialisation."""
        return {"params": {"encoder": ssl.from_torch(state_dict, self.encoder)["params"]}}

    def _terms(self, params, batch, key):
        h = self.cfg.hubert
        audio, lengths = batch["audio"], batch["audio_length"]
        paddings = (jnp.arange(audio.shape[1])[None] >= lengths[:, None]).astype(jnp.float32)
        frames = ssl.output_lengths(lengths, self.encoder.conv_kernel, self.encoder.conv_stride)
        t = self._frames(audio.shape[1])
        mask = ssl.span_mask(key, frames, t, h.mask_prob, h.mask_length, h.min_masks)
        logits = self.model.apply({"params": params}, audio, paddings, mask)
        targets = batch["targets"][:, :t]
        valid = (jnp.arange(t)[None] < frames[:, None]) & (targets >= 0) & (batch["mask"][:, None] > 0)
        return logits, jnp.maximum(targets, 0), mask, valid

    def loss(self, params, batch, rng):
        h = self.cfg.hubert
        logits, targets, mask, valid = self._terms(params, batch, rng)
        loss, metrics = ssl.hubert_loss(logits, targets, mask, valid, h.masked_weight, h.unmasked_weight)
        return loss, {f"train/{k}": v for k, v in metrics.items()}

    def eval_outputs(self, params, batch):
        logits, targets, mask, valid = self._terms(params, batch, jax.random.PRNGKey(0))  # one fixed mask
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]
        masked = (mask & valid).astype(jnp.float32)
        return {
            "masked_ce": (ce * masked).sum(1),
            "masked_correct": ((logits.argmax(-1) == targets) * masked).sum(1),
            "masked_frames": masked.sum(1),
        }

    def eval_metrics(self, outputs):
        n = max(float(outputs["masked_frames"].sum()), 1.0)
        return {
            "masked_loss": float(outputs["masked_ce"].sum()) / n,
            "masked_accuracy": float(outputs["masked_correct"].sum()) / n,
        }

    def write_artifacts(self, workdir, outputs, step):
        """Nothing to look at: the numbers are the metrics."""


TASK = HubertTask
