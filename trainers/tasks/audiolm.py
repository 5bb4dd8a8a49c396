"""AudioLM (task: audiolm): one stage of the semantic -> coarse -> fine hierarchy per config
(audiolm.stage), trained on the units and codec codes that `trainers.extract` writes:

    python -m trainers.extract units CONFIG --encoder ENCODER --layer L --clusters K --workdir UNITS
    python -m trainers.extract codes CONFIG --codec CODEC --workdir CODES
    python -m trainers.train configs/audiolm_semantic_speech.yaml --workdir runs/audiolm_semantic

Each example is a window of one utterance (audiolm.window_seconds; the paper's 30, 10 and 3 s):
  semantic  the window's units as the target (deduplicated: repeats of a unit removed)
  coarse    its units as the prefix, its first coarse_quantizers codebooks as the target
  fine      those codebooks as the prefix, the remaining ones as the target
with codebooks flattened frame by frame (jaxmodels.speechlm.audiolm). The model's sizes come
from model.name/args (StageLM's fields); its vocabularies from the folders. Eval reports the
target tokens' cross-entropy, perplexity and next-token accuracy.
"""

import math
from dataclasses import dataclass
from typing import Literal

import jax.numpy as jnp
import numpy as np

from jaxmodels import speechlm
from jaxmodels.speechlm import audiolm
from trainers.config import ConfigError
from trainers.data import speech
from trainers.data.extracted import ExtractedFrames
from trainers.data.speech import AudioDataConfig
from trainers.tasks import SplitSources


@dataclass
class AudioLMConfig:
    """One AudioLM stage (task: audiolm)."""

    stage: Literal["semantic", "coarse", "fine"] = "semantic"
    units: str | None = None  # `trainers.extract units` folder: the semantic and coarse stages
    codes: str | None = None  # `trainers.extract codes` folder: the coarse and fine stages
    coarse_quantizers: int = 4  # Q': AudioLM's 4 of SoundStream's 12 codebooks
    window_seconds: float = 30.0
    deduplicate: bool = True


SECTIONS = {"data": AudioDataConfig, "audiolm": AudioLMConfig}


def deduplicate(units):
    """Units with each run of one unit kept once."""
    units = np.asarray(units)
    return units[np.concatenate([[True], units[1:] != units[:-1]])] if len(units) else units


class Window:
    """Record -> {prefix, prefix_length, target, target_length, mask}: one window of the stage's
    tokens, random in training, the utterance's start at eval; padded to fixed sizes."""

    def __init__(self, task, units, codes, train: bool):
        self.task, self.units, self.codes, self.train = task, units, codes, train

    def __call__(self, record, rng):
        t, a = self.task, self.task.cfg.audiolm
        key = record["key"]
        units = self.units[key] if self.units is not None else None
        codes = self.codes[key] if self.codes is not None else None
        seconds = len(codes) / t.code_rate if codes is not None else len(units) / t.unit_rate
        start = float(rng.uniform(0, seconds - a.window_seconds)) if self.train and seconds > a.window_seconds else 0.0
        if units is not None:
            units = units[round(start * t.unit_rate) :][: t.unit_frames]
            units = deduplicate(units) if a.deduplicate else units
        if a.stage == "semantic":
            prefix, target = None, units
        else:
            codes = codes[round(start * t.code_rate) :][: t.code_frames].astype(np.int32)
            q = a.coarse_quantizers
            coarse = flatten_codes(codes[:, :q], t.bins)
            prefix, target = (units, coarse) if a.stage == "coarse" else (coarse, flatten_codes(codes[:, q:], t.bins))
        return {**_padded("prefix", prefix, t.prefix_size), **_padded("target", target, t.target_size)}


def flatten_codes(codes, bins: int):
    """audiolm.flatten of one utterance's (frames, K) codes, on the host."""
    return (codes + bins * np.arange(codes.shape[1])).reshape(-1)


def _padded(name, tokens, size):
    out = np.zeros(size, np.int32)
    n = 0 if tokens is None else len(tokens)
    if n:
        out[:n] = tokens
    return {name: out, f"{name}_length": np.int32(n), "mask": np.float32(1.0)}


class AudioLMTask(SplitSources):
    def __init__(self, cfg):
        self.cfg = cfg
        a = cfg.audiolm
        needs = {"semantic": ("units",), "coarse": ("units", "codes"), "fine": ("codes",)}[a.stage]
        for folder in needs:
            if getattr(a, folder) is None:
                raise ConfigError(f"audiolm.{folder}: the {a.stage} stage reads the {folder} of trainers.extract")
        self.folders = {
            split: {f: ExtractedFrames(f"{getattr(a, f)}/{split}") for f in needs}
            for split in (cfg.data.train_split, cfg.data.eval_split)
        }
        first = self.folders[cfg.data.train_split]
        if "units" in first:
            units = first["units"]
            if units.what != "units":
                raise ConfigError(f"audiolm.units: {a.units} holds {units.what}, not k-means units")
            self.unit_rate, self.unit_bins = units.frame_rate, units.meta["clusters"]
        if "codes" in first:
            codes = first["codes"]
            if codes.what != "codes":
                raise ConfigError(f"audiolm.codes: {a.codes} holds {codes.what}, not codec codes")
            self.code_rate, self.bins, self.n_q = codes.frame_rate, codes.meta["bins"], codes.width()
            if not 0 < a.coarse_quantizers < self.n_q:
                raise ConfigError(f"audiolm.coarse_quantizers: {a.coarse_quantizers}; the codes have {self.n_q}")
        self.unit_frames = math.ceil(a.window_seconds * self.unit_rate) if "units" in first else 0
        self.code_frames = math.ceil(a.window_seconds * self.code_rate) if "codes" in first else 0
        q = a.coarse_quantizers
        if a.stage == "semantic":  # the prefix is one empty slot
            self.prefix_size, self.target_size = 1, self.unit_frames
            vocab = dict(bins=self.unit_bins)
        elif a.stage == "coarse":
            self.prefix_size, self.target_size = self.unit_frames, self.code_frames * q
            vocab = dict(bins=self.bins, codebooks=q, prefix_bins=self.unit_bins)
        else:
            self.prefix_size, self.target_size = self.code_frames * q, self.code_frames * (self.n_q - q)
            vocab = dict(bins=self.bins, codebooks=self.n_q - q, prefix_bins=self.bins, prefix_codebooks=q)
        self.model = speechlm.create(
            cfg.model.name,
            **{**cfg.model.args, **vocab},
            dtype=jnp.dtype(cfg.train.compute_dtype),
            remat=cfg.train.remat,
        )
        if not isinstance(self.model, audiolm.StageLM):
            raise ConfigError(f"model.name {cfg.model.name!r} is not an AudioLM stage (audiolm_stage)")
        self.train_transform = self._window(cfg.data.train_split, True)
        self.eval_transform = self._window(cfg.data.eval_split, False)

    def _window(self, split, train):
        found = self.folders[split]
        return Window(self, found.get("units"), found.get("codes"), train)

    def make_source(self, split):
        return speech.SpeechSource(self.cfg, split)

    def example_batch(self, n):
        return {
            "prefix": np.zeros((n, self.prefix_size), np.int32),
            "prefix_length": np.zeros((n,), np.int32),
            "target": np.zeros((n, self.target_size), np.int32),
            "target_length": np.full((n,), self.target_size, np.int32),
            "mask": np.ones((n,), np.float32),
        }

    def init(self, rng, batch):
        args, _ = self.model.example()
        return self.model.init(rng, *args)

    def _terms(self, params, batch, rng=None):
        lengths = jnp.where(batch["mask"] > 0, batch["target_length"], 0)
        return audiolm.loss(self.model, params, batch["prefix"], batch["prefix_length"], batch["target"], lengths, rng)

    def loss(self, params, batch, rng, step):
        nll, count, correct = (jnp.sum(v) for v in self._terms(params, batch, rng))
        n = jnp.maximum(count, 1)
        return nll / n, {"train/nll": nll / n, "train/accuracy": correct / n}

    def eval_outputs(self, params, batch):
        nll, count, correct = self._terms(params, batch)
        return {"nll": nll, "tokens": count, "correct": correct}

    def eval_metrics(self, outputs):
        n = max(float(outputs["tokens"].sum()), 1.0)
        nll = float(outputs["nll"].sum()) / n
        return {"nll": nll, "perplexity": math.exp(nll), "accuracy": float(outputs["correct"].sum()) / n}

    def write_artifacts(self, workdir, outputs, step):
        """A stage alone makes no audio: trainers.continue_speech chains the three."""


TASK = AudioLMTask
