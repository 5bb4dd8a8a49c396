"""The corpus as tokens: codec codes cached per split, and the conditioning tokens (text bytes or
semantic units)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from trainers import files
from trainers.data import speech
from trainers.progress import progress
from trainers.tasks.codec import codec_of_run, official_codec


def fingerprint(tree):
    """A digest of a tree of arrays: token caches name the codec and tokenizer that made them."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


class TokenCache:
    """The codec, the text and semantic tokenizers, and the split caches of a TTSTask."""

    # -- the codec and text -------------------------------------------------------------
    @property
    def codec(self):
        """The codec, loaded on first use."""
        if self._codec is None:
            t = self.cfg.tts
            if t.codec_weights:
                codec = official_codec(t.codec_weights, t.codec_model)
            elif t.codec_run:
                codec = codec_of_run(t.codec_run, "codec of tts.codec_run")
            else:
                raise ValueError("task tts needs a codec: tts.codec_run (a codec run) or tts.codec_weights")
            c = codec.config
            if c.segment_length is not None or c.channels != 1:
                raise ValueError("task tts models a mono codec without segments (as encodec_24khz)")
            n_q = c.num_quantizers(self.cfg.tts.bandwidth or None)
            if (n_q, c.bins) != (self.num_codebooks, self.codebook_size):
                raise ValueError(
                    f"the codec gives {n_q} codebooks of {c.bins} at {self.cfg.tts.bandwidth or 'full'} "
                    f"kbps; the model expects {self.num_codebooks} of {self.codebook_size}"
                )
            # The weights' digest names the codec: retrained into the same workdir, or other
            # weights in the same file, it makes other tokens; a workdir moved elsewhere not.
            self.codec_version = fingerprint([codec.params, codec.codebooks])
            self._codec = codec
        return self._codec

    def text_ids(self, texts):
        """UTF-8 bytes of each text, or of its phonemes (tts.text); with word alignment the
        phonemes of each word, so that the ids hold the transcript's words between spaces."""
        if self.cfg.tts.text == "phonemes" and self.aligned:
            texts = speech.phonemize_words(texts)
        elif self.cfg.tts.text == "phonemes":
            texts = speech.phonemize(texts)
        return [np.frombuffer(t.encode(), np.uint8).astype(np.int32) for t in texts]

    def _semantic_settings(self):
        t = self.cfg.tts
        return dict(
            features=t.semantic_features,
            frame_rate=t.semantic_frame_rate,
            deduplicate=t.semantic_deduplicate,
            recognizer_run=t.recognizer_run,
            encoder=t.semantic_encoder,
            layer=t.semantic_layer,
        )

    def semantic_tokenizer(self):
        """The semantic tokenizer: the checkpoint's (set_assets), else <tokens_dir>/semantic.npz, else
        fitted on the training split (as the corpus's tokens are prepared) and saved there."""
        if self._semantic is None:
            from trainers.data.semantic import SemanticTokenizer

            t = self.cfg.tts
            path = os.path.join(self.tokens_dir, "semantic.npz")
            settings = self._semantic_settings()
            saved = SemanticTokenizer.load(path) if os.path.isfile(path) else None
            if (
                saved
                and {k: getattr(saved, k) for k in settings} == settings
                and len(saved.centroids) == t.semantic_clusters
            ):
                self._semantic = saved
                return saved
            records = speech.SpeechSource(self.cfg, self.cfg.data.train_split).records
            print(f"fitting {t.semantic_clusters} semantic clusters on {len(records)} training utterances", flush=True)
            tokenizer = SemanticTokenizer(None, **settings).fit(
                [self.read(r["source"]) for r in records], t.semantic_clusters, self.cfg.seed
            )
            os.makedirs(self.tokens_dir, exist_ok=True)
            tokenizer.save(path)
            self._semantic = tokenizer
        return self._semantic

    def assets(self):
        """The semantic tokenizer's centroids (the conditioning vocabulary), kept in each checkpoint."""
        return (
            {"semantic_centroids": np.asarray(self.semantic_tokenizer().centroids)}
            if self.cfg.tts.condition == "semantic"
            else None
        )

    def set_assets(self, assets):
        from trainers.data.semantic import SemanticTokenizer

        self._semantic = SemanticTokenizer(assets["semantic_centroids"], **self._semantic_settings())

    def conditions(self, texts, waveforms):
        """The LM's conditioning tokens of utterances: their text's bytes, or their audio's semantic tokens."""
        if self.cfg.tts.condition == "semantic":
            return [np.asarray(x, np.int32) for x in self.semantic_tokenizer()(waveforms)]
        return self.text_ids(texts)

    def join(self, first, second):
        """The conditioning of one utterance spoken after another: texts with a space between."""
        space = [ord(" ")] if self.cfg.tts.condition == "text" else []
        return np.concatenate([first, np.asarray(space, np.int32), second])

    def encode_audio(self, waveforms):
        """(codes (N, frames, K) padded, frames (N,)) of 16 kHz waveforms (resampled to the codec's rate)."""
        c = self.codec.config
        if c.sample_rate != speech.SAMPLE_RATE:
            from scipy.signal import resample_poly

            g = np.gcd(c.sample_rate, speech.SAMPLE_RATE)
            waveforms = [resample_poly(w, c.sample_rate // g, speech.SAMPLE_RATE // g) for w in waveforms]
        longest = -(-max(len(w) for w in waveforms) // c.hop_length) * c.hop_length
        batch = min(len(waveforms), 32)
        audio = np.zeros((-(-len(waveforms) // batch) * batch, longest, 1), np.float32)  # one shape: one compilation
        for i, w in enumerate(waveforms):
            audio[i, : len(w), 0] = w
        codes = np.concatenate(
            [
                np.asarray(self.codec.encode(audio[i : i + batch], self.cfg.tts.bandwidth or None)[0][0])
                for i in progress(range(0, len(audio), batch), len(audio) // batch, "codec batches")
            ]
        )[: len(waveforms)]
        return codes.transpose(0, 2, 1), np.array([-(-len(w) // c.hop_length) for w in waveforms])

    def decode_codes(self, codes, frames):
        """16 kHz waveforms of codes (N, frames, K), each cut to its frames."""
        c = self.codec.config
        audio = np.asarray(self.codec.decode([(jnp.asarray(codes).transpose(0, 2, 1), None)]))[..., 0]
        out = [audio[i, : n * c.hop_length] for i, n in enumerate(frames)]
        if c.sample_rate != speech.SAMPLE_RATE:
            from scipy.signal import resample_poly

            g = np.gcd(c.sample_rate, speech.SAMPLE_RATE)
            out = [resample_poly(w, speech.SAMPLE_RATE // g, c.sample_rate // g).astype(np.float32) for w in out]
        return out

    # -- data -------------------------------------------------------------------------
    def _tokens(self, split, records):
        """The split's text ids and codes, from the cache or encoded (and cached) now."""
        t, c = self.cfg.tts, self.codec.config
        meta = {
            "text": t.text,
            "bandwidth": t.bandwidth,
            "codec": dataclasses.asdict(c),
            "codec_version": self.codec_version,
            "condition": t.condition,
            "records": self._records_digest(records),
        }
        if self.aligned:
            meta["text_by_word"] = True
        if t.condition == "semantic":
            meta["semantic"] = [
                t.semantic_features,
                t.semantic_frame_rate,
                t.semantic_deduplicate,
                t.recognizer_run,
                t.semantic_encoder,
                t.semantic_layer,
                fingerprint(np.asarray(self.semantic_tokenizer().centroids)),
            ]
        path = os.path.join(self.tokens_dir, f"{split}.npz")
        if os.path.isfile(path):
            with np.load(path) as f:
                if json.loads(str(f["meta"])) == json.loads(json.dumps(meta)):
                    return np.split(f["text"], f["text_offsets"][1:-1]), np.split(f["codes"], f["code_offsets"][1:-1])
            print(f"{path} was made with other settings: encoding again", flush=True)
        if not self.tokens_dir:
            raise ValueError("task tts with codec_weights needs tts.tokens_dir for the encoded corpus")
        print(f"encoding {len(records)} {split} utterances with the codec into {path}", flush=True)
        waveforms = [self.read(r["source"]) for r in records]
        texts = self.conditions([r["target"] for r in records], waveforms)
        codes, frames = self.encode_audio(waveforms)
        codes = [x[:n] for x, n in zip(codes, frames)]
        os.makedirs(self.tokens_dir, exist_ok=True)
        offsets = lambda parts: np.cumsum([0] + [len(p) for p in parts])  # noqa: E731
        files.write_npz(
            path,
            meta=json.dumps(meta),
            text=np.concatenate(texts),
            text_offsets=offsets(texts),
            codes=np.concatenate(codes).astype(np.int16 if c.bins <= 2**15 else np.int32),
            code_offsets=offsets(codes),
        )
        return texts, codes

    def _records_digest(self, records):
        """Which utterances a split holds, so that another corpus of as many (its split has the same
        name) is not taken for this one: each file's path under data.path (the corpus moved
        elsewhere is the same corpus), size and transcript."""
        root = os.path.abspath(self.cfg.data.path)
        rows = [(os.path.relpath(r["source"], root), os.path.getsize(r["source"]), r["target"]) for r in records]
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()
