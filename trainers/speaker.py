"""Speaker embeddings for the speaker-similarity score of TTS evaluation.

CosyVoice and VALL-E score similarity as the cosine between speaker-verification
embeddings (WavLM-TDNN) of the generated speech and the prompt. Here the embedding model
is a small x-vector-style classifier trained on the training voices in seconds: two
1-D convolutions over log-mel frames, mean and standard-deviation pooling over the
utterance, a 128-wide embedding layer, and a softmax over the voices. The embedding
layer's output is what is compared, so voices held out of training can be scored.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmodels.asr import fbank
from trainers import speech

NUM_MEL_BINS = 40


class SpeakerNet(nn.Module):
    num_speakers: int
    width: int = 128

    @nn.compact
    def __call__(self, feats, valid):
        """(embeddings (B, width), logits (B, num_speakers)) from log-mel (B, T, mels) with valid (B, T).

        An utterance without a frame (shorter than one 25 ms window: a generated one that
        ended at once) pools to zeros: its embedding is the same for every such utterance."""
        w = valid[..., None].astype(feats.dtype)
        count = jnp.maximum(w.sum(1, keepdims=True), 1.0)
        x = feats - (feats * w).sum(1, keepdims=True) / count  # per-utterance CMN
        x = nn.relu(nn.Conv(self.width, (5,))(x))
        x = nn.relu(nn.Conv(self.width, (3,), kernel_dilation=(2,))(x))
        mean = (x * w).sum(1) / count[:, 0]
        std = jnp.sqrt(jnp.maximum((w * (x - mean[:, None]) ** 2).sum(1) / count[:, 0], 1e-6))
        embedding = nn.Dense(self.width)(jnp.concatenate([mean, std], -1))
        return embedding, nn.Dense(self.num_speakers)(nn.relu(embedding))


@jax.jit
def _fbank(audio, lengths):
    return fbank(audio, lengths, num_mel_bins=NUM_MEL_BINS)


def _features(waveforms, chunk: int = 256):
    """Log-mel frames (N, T, mels) and their valid mask of 16 kHz waveforms, computed `chunk` at a time."""
    audio, lengths = speech.pad_waveforms(waveforms)
    parts = [_fbank(audio[i : i + chunk], lengths[i : i + chunk]) for i in range(0, len(audio), chunk)]
    feats, frames = jnp.concatenate([f for f, _ in parts]), jnp.concatenate([n for _, n in parts])
    return feats, jnp.arange(feats.shape[1])[None] < frames[:, None]


def train_speaker_embedder(waveforms, speakers, steps: int, seed: int = 0, batch_size: int = 64):
    """A function from 16 kHz waveforms to unit-norm speaker embeddings, and the training accuracy."""
    names = sorted(set(speakers))
    labels = jnp.asarray([names.index(s) for s in speakers])
    feats, valid = _features(waveforms)
    model = SpeakerNet(len(names))
    params = model.init(jax.random.PRNGKey(seed), feats[:1], valid[:1])["params"]
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, idx):
        def loss_fn(p):
            logits = model.apply({"params": p}, feats[idx], valid[idx])[1]
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx]).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        params, opt_state = step(params, opt_state, rng.integers(0, len(waveforms), batch_size))
    apply = jax.jit(lambda p, f, v: model.apply({"params": p}, f, v))
    predicted = np.concatenate(
        [
            np.asarray(apply(params, feats[i : i + 256], valid[i : i + 256])[1].argmax(-1))
            for i in range(0, len(waveforms), 256)
        ]
    )
    accuracy = float(np.mean(predicted == np.asarray(labels)))

    def embed(waveforms):
        e = np.asarray(apply(params, *_features(waveforms))[0])
        return e / np.linalg.norm(e, axis=-1, keepdims=True)

    return embed, accuracy
