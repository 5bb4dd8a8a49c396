"""The tts task: the TTSTask, made of its parts, and its examples."""

from __future__ import annotations

import os

import numpy as np

from jaxmodels import speechlm
from trainers.data import speech
from trainers.tasks import SplitSources
from trainers.tasks.tts.losses import Losses
from trainers.tasks.tts.models import build_models
from trainers.tasks.tts.synthesis import Synthesis
from trainers.tasks.tts.tokens import TokenCache
from trainers.tasks.tts.words import WordAlignment


class TTSTask(TokenCache, WordAlignment, Losses, Synthesis, SplitSources):
    def __init__(self, cfg):
        self.cfg = cfg
        self.models = build_models(cfg)
        self.valle = "ar" in self.models
        self.aligned = self.valle and self.models["ar"].word_alignment
        first = next(iter(self.models.values()))
        self.codebook_size = first.codebook_size
        self.num_codebooks = self.models["nar"].num_quantizers if self.valle else first.num_codebooks
        t = cfg.tts
        self.train_transform, self.eval_transform = self._train_transform, self._transform
        self._codec = self._semantic = None
        self.tokens_dir = t.tokens_dir or (os.path.join(t.codec_run, "tokens") if t.codec_run else "")

    def read(self, path):
        """16 kHz mono samples of an audio file (resampled where data.resample says so)."""
        return speech.read_audio(path, speech.SAMPLE_RATE, self.cfg.data.resample)

    def make_source(self, split):
        records = speech.SpeechSource(self.cfg, split).records
        texts, codes = self._tokens(split, records)
        t = self.cfg.tts
        if self.aligned:
            g = self.models["ar"].group_size
            codes = [c[: len(c) - len(c) % g] for c in codes]  # whole groups: a row ends when its last word does
            word_groups = [self._word_groups(r, len(c) // g) for r, c in zip(records, codes)]
        keep = [
            i for i in range(len(records)) if len(texts[i]) <= t.max_text_length and 1 < len(codes[i]) <= t.max_frames
        ]
        if len(keep) < len(records):
            print(
                f"{split}: skipping {len(records) - len(keep)} of {len(records)} utterances longer than "
                f"tts.max_text_length={t.max_text_length} bytes or tts.max_frames={t.max_frames} frames",
                flush=True,
            )
        if not keep:
            raise ValueError(f"{split}: no utterance fits tts.max_text_length and tts.max_frames")
        kept = [{**records[i], "text_ids": texts[i], "codes": codes[i]} for i in keep]
        if self.aligned:
            for i, r in zip(keep, kept):
                r["word_groups"] = word_groups[i]
        by_voice = {}
        for i, r in enumerate(kept):
            by_voice.setdefault(speech.voice(r), []).append(i)
        for i, r in enumerate(kept):  # for tts.pair_prob
            r["partners"] = [j for j in by_voice[speech.voice(r)] if j != i]
        return kept

    def _train_transform(self, record, rng):
        t = self.cfg.tts
        if t.pair_prob > 0 and record["partners"] and rng.random() < t.pair_prob:
            first = self.train_source()[int(rng.choice(record["partners"]))]
            text = self.join(first["text_ids"], record["text_ids"])
            codes = np.concatenate([first["codes"], record["codes"]])
            if len(text) <= t.max_text_length and len(codes) <= t.max_frames:
                pair = {"text_ids": text, "codes": codes}
                if self.aligned:  # the first is a prompt: unaligned, its words counted before the record's
                    pair.update(
                        word_groups=record["word_groups"],
                        prompt_frames=len(first["codes"]),
                        prompt_words=speechlm.text_words(first["text_ids"]).max() + 1,
                    )
                record = pair
        return self._transform(record, rng)

    def _transform(self, record, rng):
        t = self.cfg.tts
        text = np.zeros(t.max_text_length, np.int32)
        text[: len(record["text_ids"])] = record["text_ids"]
        codes = np.zeros((t.max_frames, self.num_codebooks), np.int32)
        codes[: len(record["codes"])] = record["codes"]
        example = {
            "text": text,
            "text_length": np.int32(len(record["text_ids"])),
            "codes": codes,
            "frames": np.int32(len(record["codes"])),
            "mask": np.float32(1.0),
        }
        if self.aligned:
            example.update(self._words(record))
        return example

    def example_batch(self, n):
        t = self.cfg.tts
        batch = {
            "text": np.zeros((n, t.max_text_length), np.int32),
            "text_length": np.ones(n, np.int32),
            "codes": np.zeros((n, t.max_frames, self.num_codebooks), np.int32),
            "frames": np.full(n, t.max_frames, np.int32),
            "mask": np.ones(n, np.float32),
        }
        if self.aligned:
            batch.update(
                text_words=np.zeros((n, t.max_text_length), np.int32),
                audio_words=np.zeros((n, t.max_frames // self.models["ar"].group_size + 1), np.int32),
            )
        return batch
