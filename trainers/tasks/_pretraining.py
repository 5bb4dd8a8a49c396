"""What the self-supervised speech tasks (hubert, wav2vec2) share: the encoder of the config,
unlabelled utterances from a speech corpus padded to data.max_seconds (or batched by
duration), and the masked spans of the encoder's frames."""

import os

import jax.numpy as jnp
import numpy as np

from jaxmodels import ssl
from trainers import config as config_lib
from trainers.data import speech
from trainers.tasks import SplitSources

TASKS = ("hubert", "wav2vec2")


def load_encoder(path: str, **overrides) -> tuple:
    """(encoder, variables) of `path`: a hubert or wav2vec2 run's directory (its inference
    params' encoder) or a transformers weights file with its config.json (ssl.load_pretrained:
    HuBERT, wav2vec 2.0 or w2v-BERT 2.0)."""
    if not os.path.isdir(path):
        return ssl.load_pretrained(path, **overrides)
    from trainers.runs import load_run

    config = os.path.join(path, "config.yaml")
    task = config_lib.load(config).task if os.path.isfile(config) else TASKS[0]
    if task not in TASKS:
        raise config_lib.ConfigError(f"the encoder at {path} is a {task!r} run, not one of {', '.join(TASKS)}")
    trainer, params = load_run(path, task, "encoder")
    return trainer.task.encoder.clone(**overrides), {"params": params["encoder"]}


class UnitEncoder:
    """The hidden states of an SSL encoder (load_encoder's `path`) from 16 kHz audio, each
    utterance's as it alone gives them whatever the batch pads it to: raw audio into HuBERT and
    wav2vec 2.0 (with norm_valid_frames), SeamlessM4T's features into w2v-BERT 2.0."""

    def __init__(self, path: str):
        self.model, self.variables = load_encoder(path)
        if isinstance(self.model, ssl.W2vBertEncoder):
            self.frame_rate = speech.SAMPLE_RATE / 320  # filterbank frames of 10 ms, stacked in pairs
        else:
            self.model = self.model.clone(norm_valid_frames=True)
            self.frame_rate = speech.SAMPLE_RATE / int(np.prod(self.model.conv_stride))
        self.layers = self.model.num_hidden_layers

    def __call__(self, audio, lengths):
        """(every hidden state (B, T, D), valid frames (B,)) of waveforms (B, N) with lengths (B,)."""
        if isinstance(self.model, ssl.W2vBertEncoder):
            inputs, input_lengths = ssl.w2v_bert.features(audio, lengths)
            frames = input_lengths
        else:
            inputs, input_lengths = audio, lengths
            frames = ssl.output_lengths(lengths, self.model.conv_kernel, self.model.conv_stride)
        paddings = (jnp.arange(inputs.shape[1])[None] >= input_lengths[:, None]).astype(jnp.float32)
        return self.model.apply(self.variables, inputs, paddings, method="hidden_states"), frames


class AudioTransform:
    """Record -> its audio padded to max_samples, its length and mask 1. A longer utterance is
    cut to max_samples: with ``random_crop`` (training) from a random start on the encoder's
    frame grid (``hop`` samples; fairseq's random_crop), otherwise from its start."""

    def __init__(self, max_samples: int, resample: bool, hop: int, random_crop: bool):
        self.max_samples, self.resample, self.hop, self.random_crop = max_samples, resample, hop, random_crop

    def crop(self, record, rng):
        """(samples, the encoder frame they start at)."""
        samples = speech.read_audio(record["source"], resample=self.resample)
        first = 0
        if self.random_crop and len(samples) > self.max_samples:
            first = int(rng.integers(0, (len(samples) - self.max_samples) // self.hop + 1))
        start = first * self.hop
        return samples[start : start + self.max_samples], first

    def padded(self, samples):
        audio = np.zeros(self.max_samples, np.float32)
        audio[: len(samples)] = samples
        return {"audio": audio, "audio_length": np.int32(len(samples)), "mask": np.float32(1)}

    def __call__(self, record, rng):
        return self.padded(self.crop(record, rng)[0])


class SpeechPretraining(SplitSources):
    """A batch holds "audio" (B, samples), "audio_length" and "mask"; a subclass adds its
    targets (frame_keys: those of one value per encoder frame) and the objective."""

    frame_keys: tuple = ()

    def __init__(self, cfg):
        self.cfg = cfg
        self.encoder = ssl.create(
            cfg.model.name, **cfg.model.args, dtype=jnp.dtype(cfg.train.compute_dtype), remat=cfg.train.remat
        )
        self.max_samples = int(cfg.data.max_seconds * speech.SAMPLE_RATE)
        self.hop = int(np.prod(self.encoder.conv_stride))  # samples per encoder frame
        self.max_frames = self.frames(self.max_samples)

    def frames(self, samples):
        """The encoder's frames of `samples` audio samples."""
        return int(ssl.output_lengths(np.int64(samples), self.encoder.conv_kernel, self.encoder.conv_stride))

    def make_source(self, split):
        return speech.SpeechSource(self.cfg, split)

    def length_buckets(self):
        crop = lambda samples: {"audio": samples, **{k: self.frames(samples) for k in self.frame_keys}}  # noqa: E731
        return speech.duration_buckets(self.cfg.data, self.train_source(), crop)

    def example_batch(self, n):
        return {
            "audio": np.zeros((n, self.max_samples), np.float32),
            "audio_length": np.full((n,), self.max_samples, np.int32),
            "mask": np.ones((n,), np.float32),
            **{k: np.zeros((n, self.max_frames), np.int32) for k in self.frame_keys},
        }

    def masked_spans(self, batch, key, mask_prob: float, mask_length: int, min_masks: int):
        """(paddings (B, samples), valid frames (B, T'), masked frames (B, T')) of a batch."""
        audio, lengths = batch["audio"], batch["audio_length"]
        paddings = (jnp.arange(audio.shape[1])[None] >= lengths[:, None]).astype(jnp.float32)
        frames = ssl.output_lengths(lengths, self.encoder.conv_kernel, self.encoder.conv_stride)
        t = self.frames(audio.shape[1])
        valid = (jnp.arange(t)[None] < frames[:, None]) & (batch["mask"][:, None] > 0)
        return paddings, valid, ssl.span_mask(key, frames, t, mask_prob, mask_length, min_masks)

    def write_artifacts(self, workdir, outputs, step):
        """Nothing to look at: the numbers are the metrics."""
