"""The per-utterance frames that `trainers.extract` wrote (k-means units, S3 tokens, features,
codes), looked up by the manifest record's key, and the tokenizer that made units of them.
Shards are memory-mapped when first read, in the process that reads (a grain worker), so a
process reads from disk only the utterances it uses."""

import json
import os

import numpy as np

from trainers.cli import InputError


class ExtractedFrames:
    """DIR/<split>/ of `trainers.extract units`: ``frames[key]`` is one utterance's (frames, ...) array."""

    def __init__(self, folder: str):
        path = os.path.join(folder, "index.json")
        if not os.path.isfile(path):
            raise InputError(
                f"{path} not found: write it with python -m trainers.extract units CONFIG --workdir "
                f"{os.path.dirname(os.path.normpath(folder))} ... (a split is listed when it is complete)"
            )
        with open(path) as f:
            index = json.load(f)
        self.what, self.frame_rate, self.meta = index["what"], index["frame_rate"], index
        self.files = [os.path.join(folder, f"{s['prefix']}_{self.what}.npy") for s in index["shards"]]
        self._where = {}
        for shard, s in enumerate(index["shards"]):
            lengths = np.load(os.path.join(folder, f"{s['prefix']}_lengths.npy"))
            rows = np.load(os.path.join(folder, f"{s['prefix']}_indices.npy"))
            starts = np.cumsum(lengths) - lengths
            for row, start, length in zip(rows, starts, lengths):
                self._where[index["keys"][row]] = (shard, int(start), int(length))
        self._shards = None

    def __getstate__(self):
        return {**self.__dict__, "_shards": None}

    def __len__(self):
        return len(self._where)

    def __contains__(self, key):
        return key in self._where

    def __iter__(self):
        return iter(self._where)

    def unit_tokenizer(self):
        """16 kHz waveforms -> their units (int32 arrays), made as these were: the k-means units
        of an encoder's layer (`units` with --clusters or --tokenizer: its tokenizer.npz) or the
        S3 tokens of a recogniser run with the quantizer inside or of released weights (`s3tokens`)."""
        meta = self.meta
        if "tokenizer" in meta:
            from trainers.data.semantic import SemanticTokenizer

            tokenizer = SemanticTokenizer.load(meta["tokenizer"])
            return lambda waves: [np.asarray(u, np.int32) for u in tokenizer(waves)]
        if "s3tokenizer" not in meta:
            raise InputError(
                f"{os.path.dirname(self.files[0])} holds {self.what} that no tokenizer makes of new audio "
                "(extract units --clusters or s3tokens makes units)"
            )
        import jax.numpy as jnp

        from trainers.data.speech import pad_waveforms

        if os.path.isdir(meta["s3tokenizer"]):
            from trainers.tasks.ctc import Recognizer

            encode = Recognizer(meta["s3tokenizer"]).s3_tokens
        else:
            from jaxmodels.cosyvoice import s3tokenizer

            model, variables = s3tokenizer.load(meta["s3tokenizer"], meta["s3tokenizer_model"])
            encode = lambda audio, lengths: s3tokenizer.tokenize(model, variables, audio, lengths)  # noqa: E731

        def tokenize(waves):
            audio, lengths = pad_waveforms(waves)
            tokens, counts = encode(jnp.asarray(audio), jnp.asarray(lengths))
            return [np.asarray(t[:n], np.int32) for t, n in zip(np.asarray(tokens), np.asarray(counts))]

        return tokenize

    def width(self) -> int:
        """The size of a frame's vector (features; codes: the codebooks), or 0 (units)."""
        values = np.load(self.files[0], mmap_mode="r")
        return int(values.shape[1]) if values.ndim == 2 else 0

    def __getitem__(self, key):
        if key not in self._where:
            raise InputError(f"utterance {key!r} has no extracted frames in {os.path.dirname(self.files[0])}")
        if self._shards is None:
            self._shards = [np.load(f, mmap_mode="r") for f in self.files]
        shard, start, length = self._where[key]
        return np.asarray(self._shards[shard][start : start + length])
