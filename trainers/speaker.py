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
from trainers import files, sharding
from trainers.cli import InputError, command
from trainers.data import speech

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
        # Per-utterance CMN; every layer zeroed past the utterance, so that its embedding is the
        # same whatever the batch pads it to.
        x = (feats - (feats * w).sum(1, keepdims=True) / count) * w
        x = nn.relu(nn.Conv(self.width, (5,))(x)) * w
        x = nn.relu(nn.Conv(self.width, (3,), kernel_dilation=(2,))(x)) * w
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


class SpeakerEmbedder:
    """16 kHz waveforms -> unit-norm speaker embeddings, from a trained SpeakerNet."""

    def __init__(self, params, num_speakers: int):
        self.params, self.model = params, SpeakerNet(num_speakers)
        self.apply = jax.jit(lambda p, f, v: self.model.apply({"params": p}, f, v))

    def __call__(self, waveforms):
        with sharding.first_device():
            e = np.asarray(self.apply(self.params, *_features(waveforms))[0])
        return e / np.linalg.norm(e, axis=-1, keepdims=True)

    def embed(self, params, audio, lengths):
        """The same of padded audio (B, T) with lengths (B,), traceable (for jit over a mesh)."""
        feats, frames = fbank(audio, lengths, num_mel_bins=NUM_MEL_BINS)
        e = self.model.apply({"params": params}, feats, jnp.arange(feats.shape[1])[None] < frames[:, None])[0]
        return e / jnp.linalg.norm(e, axis=-1, keepdims=True)

    def save(self, path: str):
        flat = {
            "/".join(k.key for k in key): np.asarray(v)
            for key, v in jax.tree_util.tree_flatten_with_path(self.params)[0]
        }
        files.write_npz(path, num_speakers=self.model.num_speakers, **flat)

    @classmethod
    def load(cls, path: str):
        try:
            with np.load(path) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError) as e:
            raise InputError(
                f"cannot read speaker embedder {path}: {e} (python -m trainers.speaker CONFIG --out {path} makes one)"
            ) from e
        if "num_speakers" not in arrays:
            raise InputError(f"{path} is not a speaker embedder saved by python -m trainers.speaker")
        num_speakers = int(arrays.pop("num_speakers"))
        params = {}
        for key, value in arrays.items():
            node = params
            *parents, leaf = key.split("/")
            for name in parents:
                node = node.setdefault(name, {})
            node[leaf] = value
        return cls(jax.device_put(params, jax.local_devices()[0]), num_speakers)


def train_speaker_embedder(waveforms, speakers, steps: int, seed: int = 0, batch_size: int = 64):
    """(SpeakerEmbedder, training accuracy) of a SpeakerNet trained on waveforms labelled by speaker."""
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
    embedder = SpeakerEmbedder(params, len(names))
    predicted = np.concatenate(
        [
            np.asarray(embedder.apply(params, feats[i : i + 256], valid[i : i + 256])[1].argmax(-1))
            for i in range(0, len(waveforms), 256)
        ]
    )
    return embedder, float(np.mean(predicted == np.asarray(labels)))


@command
def main(argv=None):
    """python -m trainers.speaker CONFIG.yaml --out SPEAKER.npz [--steps N]: a speaker embedder
    for evals: speaker_similarity, trained on the voices of the config's training split."""
    import argparse

    from trainers.config import load

    parser = argparse.ArgumentParser(prog="python -m trainers.speaker", description=main.__doc__)
    parser.add_argument("config", help="a config of an audio family (its data section names the corpus)")
    parser.add_argument("--out", required=True, help="the embedder's .npz")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="dotted.key=value")
    args = parser.parse_intermixed_args(argv)
    cfg = load(args.config, args.overrides)
    records = speech.SpeechSource(cfg, cfg.data.train_split).records
    voices = [r.get("voice", r.get("speaker")) for r in records]
    waveforms = [speech.read_audio(r["source"], speech.SAMPLE_RATE, cfg.data.resample) for r in records]
    embedder, accuracy = train_speaker_embedder(waveforms, voices, args.steps, args.seed)
    embedder.save(args.out)
    print(f"{args.out}: {len(set(voices))} training voices, training accuracy {accuracy:.2f}", flush=True)


if __name__ == "__main__":
    main()
