"""HuBERT pretraining (task: hubert): masked prediction of k-means units of speech.

Each utterance's targets are k-means units of its frames (trainers.data.semantic): the first
iteration clusters MFCCs (39 dimensions at 100 Hz, every other unit a target at the
encoder's 50 Hz, as fairseq's label rate of 100), the second a layer of a trained encoder
(hubert.target_features: hubert, target_encoder: the first iteration's run directory, or a
transformers weights file). The
clusters are fitted on the first hubert.fit_utterances training utterances and every
utterance's units cached in hubert.targets_dir (<split>.npz, tokenizer.npz), reused while
the settings and the corpus are the same.

A step masks spans of the encoder's frames (ssl.span_mask: mask_prob, mask_length,
min_masks), replaces them with the learned embedding and scores every frame against the
classes (ssl.HubertPretraining); the loss is the cross-entropy on the masked frames (and,
weighted, on the others), plus fairseq's penalty on the convolutional features. Eval
reports the same on the eval split with one fixed mask: eval/masked_loss and
eval/masked_accuracy. Batches by duration as the ctc task's (data.batch_seconds).
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
from trainers import files
from trainers.data import speech
from trainers.data.speech import AudioDataConfig
from trainers.tasks._pretraining import AudioTransform, SpeechPretraining


@dataclass
class HubertConfig:
    """Targets, masking and the prediction head (fairseq's HuBERT Base settings by default)."""

    target_features: Literal["mfcc", "hubert"] = "mfcc"
    # target_features hubert: a hubert or wav2vec2 run's directory, or a transformers weights file
    # (config.json beside it)
    target_encoder: str = ""
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
    feature_penalty: float = 10.0  # the weight of the mean square of the convolutional features
    feature_grad_mult: float = 0.1  # the gradient into the convolutional encoder scaled by this


SECTIONS = {"data": AudioDataConfig, "hubert": HubertConfig}


class _Transform(AudioTransform):
    """Record -> its audio (AudioTransform) and its units from the same frame on, padded with -1 to max_frames."""

    def __init__(self, max_samples: int, max_frames: int, units: dict, resample: bool, hop: int, random_crop: bool):
        super().__init__(max_samples, resample, hop, random_crop)
        self.max_frames, self.units = max_frames, units

    def __call__(self, record, rng):
        samples, first = self.crop(record, rng)
        targets = np.full(self.max_frames, -1, np.int32)
        units = self.units[record["key"]][first : first + self.max_frames]
        targets[: len(units)] = units
        return {**self.padded(samples), "targets": targets}


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def _digest(records) -> str:
    return hashlib.sha256(json.dumps([[r["key"], r["source"]] for r in records]).encode()).hexdigest()


class HubertTask(SpeechPretraining):
    frame_keys = ("targets",)

    def __init__(self, cfg):
        super().__init__(cfg)
        h = cfg.hubert
        self.model = ssl.HubertPretraining(self.encoder, h.clusters, h.final_dim, h.logit_temp, h.feature_grad_mult)
        self._tokenizer = None
        train_units = self._units(cfg.data.train_split, self.train_source())
        eval_units = self._units(cfg.data.eval_split, self.eval_source())
        sizes = self.max_samples, self.max_frames
        self.train_transform = _Transform(*sizes, train_units, cfg.data.resample, self.hop, random_crop=True)
        self.eval_transform = _Transform(*sizes, eval_units, cfg.data.resample, self.hop, random_crop=False)

    # -- targets ----------------------------------------------------------------------
    def tokenizer(self):
        """The k-means tokenizer of the targets: the one cached in targets_dir when it was fitted
        with these settings on these utterances, else fitted now (and cached)."""
        from trainers.data.semantic import SemanticTokenizer

        if self._tokenizer is None:
            h = self.cfg.hubert
            records = self.train_source().records[: h.fit_utterances]
            meta = {**self._settings(), **self._fingerprint(), "clusters": h.clusters, "seed": self.cfg.seed}
            meta["fitted_on"] = _digest(records)
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

    def _fingerprint(self) -> dict:
        """What else the cached targets depend on: a target run's newest checkpoint step."""
        h = self.cfg.hubert
        checkpoints = os.path.join(h.target_encoder, "checkpoints")
        if h.target_features != "hubert" or not os.path.isdir(checkpoints):
            return {}
        return {"encoder_step": max((int(n) for n in os.listdir(checkpoints) if n.isdigit()), default=0)}

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

    # -- model ------------------------------------------------------------------------
    def init(self, rng, batch):
        return self.model.init({"params": rng}, batch["audio"][:, :400])

    def convert_weights(self, state_dict):
        """An encoder's transformers state_dict: the prediction head keeps its initialisation."""
        return {"params": {"encoder": ssl.from_torch(state_dict, self.encoder)["params"]}}

    def _terms(self, params, batch, key, dropout_key=None):
        """The logits and what scores them; with ``dropout_key`` (training) the encoder's dropout acts."""
        h = self.cfg.hubert
        paddings, valid, mask = self.masked_spans(batch, key, h.mask_prob, h.mask_length, h.min_masks)
        rngs = {} if dropout_key is None else {"dropout": dropout_key}
        logits, penalty = self.model.apply({"params": params}, batch["audio"], paddings, mask, rngs=rngs)
        targets = batch["targets"][:, : mask.shape[1]]
        return logits, jnp.maximum(targets, 0), mask, valid & (targets >= 0), penalty

    def loss(self, params, batch, rng, step):
        h = self.cfg.hubert
        logits, targets, mask, valid, penalty = self._terms(params, batch, rng, jax.random.fold_in(rng, 1))
        loss, metrics = ssl.hubert_loss(logits, targets, mask, valid, h.masked_weight, h.unmasked_weight)
        metrics["features_penalty"] = penalty
        return loss + h.feature_penalty * penalty, {f"train/{k}": v for k, v in metrics.items()}

    def eval_outputs(self, params, batch):
        logits, targets, mask, valid, _ = self._terms(params, batch, jax.random.PRNGKey(0))  # one fixed mask
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


TASK = HubertTask
