"""Semantic tokens of speech: frame features clustered by k-means.

HuBERT's first iteration clusters MFCC-like frames and AudioLM's semantic tokens are
k-means units of a speech model's hidden states; this tokenizer does either: "logmel"
(80-bin log-mel filterbanks with per-utterance mean removal, averaged down to
frame_rate), "mfcc" (Kaldi's 13 MFCCs with deltas and delta-deltas at 100 Hz, the
targets of HuBERT's first iteration), "recognizer" (the encoder states of a CTC run, at its frame rate of
100 / lfr_n Hz) or "hubert" (hidden state `layer` of a HuBERT or wav2vec 2.0 encoder,
`encoder` a transformers weights file with its config.json or a hubert or wav2vec2 run's
directory, 50 Hz for all: layer 6 of
HuBERT Base with 500 clusters is the GSLM and SpeechTokenizer recipe). k-means++ and
mini-batch updates from jaxmodels.speechlm, on frames of the given utterances; tokens
optionally de-duplicated (runs collapsed). A tokenizer is saved to and loaded from one
.npz (centroids and settings); a tts run also keeps the centroids in each of its
checkpoints (TTSTask.assets).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels import speechlm
from jaxmodels.asr import fbank, mfcc
from trainers import files
from trainers.cli import InputError
from trainers.data import speech

MEL_RATE = 100  # fbank frames per second (10 ms shift)


class SemanticTokenizer:
    def __init__(
        self,
        centroids,
        features: str = "logmel",
        frame_rate: int = 50,
        deduplicate: bool = False,
        recognizer_run: str = "",
        encoder: str = "",
        layer: int = 6,
    ):
        if features not in ("logmel", "mfcc", "recognizer", "hubert"):
            raise ValueError(f"semantic features must be logmel, mfcc, recognizer or hubert, not {features!r}")
        if features == "mfcc" and frame_rate != MEL_RATE:
            raise ValueError(f"mfcc features come at {MEL_RATE} Hz, not {frame_rate}")
        if features == "hubert" and not encoder:
            raise ValueError("hubert features need an encoder (a transformers checkpoint file or a pretraining run)")
        if features == "logmel" and MEL_RATE % frame_rate:
            raise ValueError(f"logmel frame_rate must divide {MEL_RATE} Hz, not {frame_rate}")
        self.centroids = None if centroids is None else jnp.asarray(centroids, jnp.float32)
        self.features, self.frame_rate, self.deduplicate = features, frame_rate, deduplicate
        self.recognizer_run, self.encoder, self.layer = recognizer_run, encoder, layer
        self._encoder = None

    # -- features -----------------------------------------------------------------------
    def frames(self, waveforms):
        """(features (N, T, D), valid (N, T)) of 16 kHz waveforms."""
        audio, lengths = speech.pad_waveforms(waveforms)
        encode = {
            "logmel": lambda: self._logmel,
            "mfcc": lambda: self._mfcc,
            "recognizer": self._recognizer_encoder,
            "hubert": self._ssl_encoder,
        }
        encode = encode[self.features]()
        parts = [encode(audio[i : i + 64], lengths[i : i + 64]) for i in range(0, len(audio), 64)]
        return jnp.concatenate([f for f, _ in parts]), jnp.concatenate([v for _, v in parts])

    def _logmel(self, audio, lengths):
        feats, frames = fbank(jnp.asarray(audio), jnp.asarray(lengths))
        valid = jnp.arange(feats.shape[1])[None] < frames[:, None]
        feats = feats - (feats * valid[..., None]).sum(1, keepdims=True) / jnp.maximum(frames, 1)[:, None, None]
        group = MEL_RATE // self.frame_rate
        t = feats.shape[1] // group * group
        pooled = feats[:, :t].reshape(feats.shape[0], t // group, group, -1).mean(2)
        return pooled, jnp.arange(t // group)[None] < (frames // group)[:, None]

    @staticmethod
    def _mfcc(audio, lengths):
        feats, frames = mfcc(jnp.asarray(audio), jnp.asarray(lengths))
        return feats, jnp.arange(feats.shape[1])[None] < frames[:, None]

    def _recognizer_encoder(self):
        """The CTC run's encoder states: (audio, lengths) -> (states, valid)."""
        if self._encoder is None:
            from trainers.tasks.ctc import Recognizer

            recognizer = Recognizer(self.recognizer_run)
            # SenseVoice's 100 / 6 Hz is no integer: a whole number of Hz either side of it names it.
            if abs(recognizer.frame_rate - self.frame_rate) >= 1:
                raise ValueError(
                    f"the recogniser's frames come at {recognizer.frame_rate:.4g} Hz; frame_rate is {self.frame_rate}"
                )
            self._encoder = recognizer.encoder_states
        return self._encoder

    def _ssl_encoder(self):
        """Hidden state `layer` of the SSL encoder: (audio, lengths) -> (states, valid)."""
        if self._encoder is None:
            from trainers.tasks._pretraining import UnitEncoder

            encoder = UnitEncoder(self.encoder)
            if encoder.frame_rate != self.frame_rate:
                raise ValueError(
                    f"the encoder's frames come at {encoder.frame_rate:g} Hz; frame_rate is {self.frame_rate}"
                )
            if not 0 <= self.layer <= encoder.layers:
                raise ValueError(f"layer {self.layer}: the encoder has hidden states 0..{encoder.layers}")

            @jax.jit
            def encode(audio, lengths):
                states, frames = encoder(audio, lengths)
                return states[self.layer], jnp.arange(states[self.layer].shape[1])[None] < frames[:, None]

            self._encoder = encode
        return self._encoder

    # -- fitting and tokens -----------------------------------------------------------------
    def fit(self, waveforms, k: int, seed: int = 0, steps: int = 100, batch_size: int = 4096):
        """Centroids of k clusters over the frames of `waveforms`; returns self."""
        feats, valid = self.frames(waveforms)
        points = np.asarray(feats)[np.asarray(valid)]
        self.centroids = speechlm.fit(jax.random.PRNGKey(seed), points, k, steps=steps, batch_size=batch_size)
        return self

    def __call__(self, waveforms):
        """Token sequences (lists of ints) of 16 kHz waveforms."""
        if self.centroids is None:
            raise ValueError("the semantic tokenizer has no centroids: fit or load it first")
        feats, valid = self.frames(waveforms)
        tokens, lengths = speechlm.tokenize(feats, valid, self.centroids, deduplicate=self.deduplicate)
        return [list(map(int, row[:n])) for row, n in zip(np.asarray(tokens), np.asarray(lengths))]

    def save(self, path: str):
        settings = {
            "features": self.features,
            "frame_rate": self.frame_rate,
            "deduplicate": self.deduplicate,
            "recognizer_run": self.recognizer_run,
            "encoder": self.encoder,
            "layer": self.layer,
        }
        files.write_npz(path, centroids=np.asarray(self.centroids), settings=json.dumps(settings))

    @classmethod
    def load(cls, path: str) -> SemanticTokenizer:
        try:
            with np.load(path) as f:
                return cls(f["centroids"], **json.loads(str(f["settings"])))
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise InputError(f"{path} is not a semantic tokenizer saved by SemanticTokenizer.save: {e}") from e
