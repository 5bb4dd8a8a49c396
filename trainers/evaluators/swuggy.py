"""Spoken lexical decision for an AudioLM semantic stage, as ZeroSpeech 2021's sWUGGY (AudioLM,
Borsos et al. 2023, reports it in Table 3): the LM should give a spoken word a higher
probability than a spoken non-word in the same voice.

    evals:
      - name: swuggy
        pairs: 200

Each pair is spoken by eSpeak NG in one of the built-in corpus's held-out voices
(data.corpus_seed's), at a pitch and rate of its own: a word of the corpus's vocabulary (each in
turn) and a non-word made from it by changing one consonant letter between vowels for another
of its kind (a stop for a stop, a fricative for a fricative, a nasal for a nasal, l for r; a
vowel for a vowel in words without one), never a word of the vocabulary nor a spelling of the
word's sounds. Both are tokenized as the stage's units were (ExtractedFrames.unit_tokenizer),
deduplicated as its data, and scored by their summed log-probability under the stage (no
prefix). Metrics: swuggy_accuracy (the share of pairs whose word scores higher; chance 0.5),
swuggy_pairs, and swuggy_unigram_accuracy, the control without context: the same pairs scored by
the training split's unit frequencies (deduplicated as the stage's data, add-one smoothed).
"""

import random
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from trainers.config import ConfigError, EvalConfig
from trainers.data import speech

CONSONANTS = ("bdgptk", "fvsz", "mn", "lr")
VOWELS = "aeiou"


@dataclass
class SWuggyConfig(EvalConfig):
    pairs: int = 200
    seed: int = 0


def vocabulary() -> list[str]:
    """The built-in corpus's words."""
    return sorted({*speech.NAMES, "has", *speech.NUMBERS, *speech.COLOURS, *speech.THINGS})


def non_word(word: str, rng: random.Random, words) -> str:
    """`word` with one consonant letter that stands between vowels or the word's ends changed for
    another of its kind (so that the clusters stay English ones), or, where there is none, one
    vowel for another; never one of `words`, nor said as the word is."""

    def alone(i):
        return all(j < 0 or j >= len(word) or word[j] in VOWELS for j in (i - 1, i + 1))

    swaps = [(i, kind) for i, letter in enumerate(word) for kind in CONSONANTS if letter in kind and alone(i)]
    swaps = swaps or [(i, VOWELS) for i, letter in enumerate(word) if letter in VOWELS]
    options = [word[:i] + other + word[i + 1 :] for i, kind in swaps for other in kind if other != word[i]]
    options = [w for w in options if w not in words]
    said = speech.phonemize([word, *options])  # a change of spelling alone ("haz") is no non-word
    options = [w for w, phones in zip(options, said[1:]) if phones != said[0]]
    if not options:
        raise ValueError(f"no non-word can be made from {word!r}")
    return rng.choice(options)


def lexical_pairs(count: int, corpus_seed: int, seed: int) -> list[dict]:
    """`count` pairs {word, non_word, voice, pitch, rate}, the vocabulary's words in turn."""
    words = vocabulary()
    _, voices = speech.corpus_voices(corpus_seed)
    rng = random.Random(seed)
    pairs = []
    for i in range(count):
        word = words[i % len(words)]
        pairs.append(
            {
                "word": word,
                "non_word": non_word(word, rng, words),
                "voice": rng.choice(voices),
                "pitch": rng.randint(25, 75),
                "rate": rng.randint(130, 210),
            }
        )
    return pairs


class SWuggy:
    def __init__(self, cfg: SWuggyConfig, task):
        from trainers.tasks.audiolm import AudioLMTask, deduplicate

        if not isinstance(task, AudioLMTask) or task.cfg.audiolm.stage != "semantic":
            raise ConfigError("evals: swuggy scores an AudioLM semantic stage (task audiolm, audiolm.stage semantic)")
        self.model = task.model
        dedup = deduplicate if task.cfg.audiolm.deduplicate else (lambda u: u)
        train_units = task.folders[task.cfg.data.train_split]["units"]
        self.pairs = lexical_pairs(cfg.pairs, task.cfg.data.corpus_seed, cfg.seed)
        tokenize = train_units.unit_tokenizer()
        spoken = speech.espeak_16k(
            (p[kind], p["voice"], p["pitch"], p["rate"]) for p in self.pairs for kind in ("word", "non_word")
        )
        units = [dedup(u) for u in tokenize(spoken)]
        lengths = np.array([len(u) for u in units], np.int32)
        self.units = np.zeros((len(units), max(lengths.max(), 1)), np.int32)
        for row, u in enumerate(units):
            self.units[row, : len(u)] = u
        self.lengths = lengths
        # The control depends on no params: scored once, here.
        counts = np.ones(task.unit_bins)
        for key in train_units:
            counts += np.bincount(dedup(train_units[key]), minlength=task.unit_bins)
        valid = np.arange(self.units.shape[1]) < lengths[:, None]
        unigram = np.sum(np.log(counts / counts.sum())[self.units] * valid, axis=1).reshape(-1, 2)
        self.unigram_accuracy = float(np.mean(unigram[:, 0] > unigram[:, 1]))

    def __call__(self, outputs, params):
        from jaxmodels.speechlm import audiolm

        loss = jax.jit(audiolm.loss, static_argnums=0)
        empty = jnp.zeros((len(self.units), 1), jnp.int32)
        nll, _, _ = loss(self.model, params, empty, jnp.zeros(len(self.units), jnp.int32), self.units, self.lengths)
        nll = np.asarray(nll).reshape(-1, 2)  # (pairs, [word, non-word])
        return {
            "swuggy_accuracy": float(np.mean(nll[:, 0] < nll[:, 1])),
            "swuggy_pairs": len(nll),
            "swuggy_unigram_accuracy": self.unigram_accuracy,
        }, {}


CONFIG, EVALUATOR = SWuggyConfig, SWuggy
