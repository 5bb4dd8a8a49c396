"""Zero-shot text-to-speech over codec tokens (task: tts): VALL-E's AR + NAR, or one delayed LM.

Data: a speech split (text + audio) becomes (text bytes, codec codes). The codec, a
codec run (tts.codec_run) or official EnCodec weights, encodes each split once into
tts.tokens_dir/<split>.npz; a cache made by another codec or text setting is rebuilt.
Text is the UTF-8 bytes of the transcript or of its eSpeak NG phonemes (vocabulary 256).

Training (model.name "valle"): the AR model's next-code loss over the first codebook
(with EOS) plus the NAR model's loss on one random stage k in 2..K per utterance, given
a random prefix of the same utterance (up to half) as its acoustic prompt, as
lifeiteng/vall-e trains it. model.name "delayed" (or a named speechlm config such as
musicgen_small): one DelayedLM over all codebooks, text as its prefix, or with
tts.condition semantic the utterance's own semantic tokens (AudioLM's acoustic stage;
trainers/semantic.py, fitted on the training split into tts.tokens_dir/semantic.npz; its
centroids are kept in each checkpoint and restored with it).
With tts.pair_prob an example is two utterances of one voice end to end, the shape of a
prompt and its continuation. With the AR's word_alignment (VALL-E R's monotonic alignment,
over words) each utterance's record needs "word_starts" (seconds; the built-in corpus has
eSpeak NG's own): the groups of codes from one start to the next are that word's, the
first utterance of a pair is left unaligned as an inference prompt is, and phonemes are
taken word by word, so that the text's words are the transcript's. With
tts.guidance_dropout the AR is also trained without its text (and words) on that fraction
of examples, so that sampling can be guided by the text (tts.guidance_scale: classifier-
free guidance, speechlm.generate_ar).

Evaluation: teacher-forced losses and accuracies on the eval split, then zero-shot TTS
as CosyVoice evaluates it: for tts.eval_examples held-out sentences (from pair
tts.eval_offset on: pairs past the reported ones can serve to choose decoding settings),
the text is the prompt's transcript and the sentence, the acoustic prompt is another
utterance of the same speaker, and the generated speech (AR sampled, NAR greedy, codec
decoder), the real recordings and the recordings through the codec are the outputs that
evals score (speech_wer: a recogniser's word error rate; speaker_similarity). WAVs and
spectrograms of prompt, reference and generated speech go into the workdir. With
semantic conditioning the sentence's tokens (and length) come from its real recording:
a resynthesis in the prompt's voice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmodels import speechlm
from jaxmodels.speechlm import VALLEAR, VALLENAR, DelayedLM
from jaxmodels.speechlm.transformer import lengths_mask
from trainers import files, sharding, speech
from trainers.config import ConfigError
from trainers.progress import progress
from trainers.runs import load_run
from trainers.speech import AudioDataConfig
from trainers.tasks import SplitSources
from trainers.tasks.codec import official_codec


@dataclass
class TTSConfig:
    """Zero-shot TTS over codec tokens (task: tts): the codec, text, prompts, sampling, evaluation."""

    # The codec whose codes are modelled: a codec run's directory, or official EnCodec
    # weights (codec_weights, with codec_model a name or a JSON file of its config).
    codec_run: str = ""
    codec_weights: str = ""
    codec_model: str = "encodec_24khz"
    bandwidth: float = 0.0  # kbps: how many of the codec's codebooks are modelled (0: all)
    # Where the corpus's codes are cached (<dir>/<split>.npz); default <codec_run>/tokens.
    tokens_dir: str = ""
    text: Literal["chars", "phonemes"] = "chars"  # UTF-8 bytes of the text, or of eSpeak NG's phonemes
    # What the LM is conditioned on: the text, or (a delayed LM) the semantic tokens of the
    # utterance itself, AudioLM's acoustic stage: k-means units of log-mel frames or of a
    # CTC run's encoder states (the run in recognizer_run), fitted on the training split and
    # saved as <tokens_dir>/semantic.npz.
    condition: Literal["text", "semantic"] = "text"
    semantic_features: Literal["logmel", "recognizer"] = "logmel"
    semantic_clusters: int = 100
    semantic_frame_rate: int = 25
    semantic_deduplicate: bool = False
    max_text_length: int = 128  # text bytes or semantic tokens; longer utterances are skipped (and counted)
    max_frames: int = 512  # codec frames; longer utterances are skipped (and counted)
    # Training: with this probability an example is another utterance of the same voice (the
    # manifest's "voice", else "speaker") followed by this one, texts joined by a space, codes
    # end to end (when both fit): what zero-shot inference feeds the model (a prompt and its
    # continuation), which a corpus of short utterances otherwise never shows it.
    pair_prob: float = 0.0
    # Sampling of the AR model (the NAR stages are greedy, as VALL-E's).
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    # Classifier-free guidance of the VALL-E AR on its text: the text (and word alignment) is
    # dropped from this fraction of training examples, and codes are drawn at this scale
    # (1.0: without guidance; speechlm.generate_ar).
    guidance_dropout: float = 0.0
    guidance_scale: float = 1.0
    # Evaluation: eval_examples held-out sentences spoken in the voice of a prompt utterance
    # of the same speaker (scored by evals: speech_wer and speaker_similarity).
    eval_examples: int = 16
    eval_offset: int = 0  # the prompt pairs evaluated: [eval_offset, eval_offset + eval_examples)
    # A ctc run: the encoder of semantic_features recognizer, and the prompt's transcript for
    # python -m trainers.tts when --prompt-text is not given.
    recognizer_run: str = ""

    def __post_init__(self):
        if self.eval_offset < 0:
            raise ConfigError(f"tts.eval_offset must be at least 0, not {self.eval_offset}")
        if not 0.0 <= self.guidance_dropout < 1.0:
            raise ConfigError(f"tts.guidance_dropout must be in [0, 1), not {self.guidance_dropout}")


SECTIONS = {"data": AudioDataConfig, "tts": TTSConfig}

TEXT_VOCAB = 256  # bytes


def masked_mean(values, mask):
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def cross_entropy(logits, targets, mask):
    """(mean loss, accuracy) over the positions where mask is set (targets elsewhere may be out of range)."""
    targets = jnp.where(mask > 0, targets, 0)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return masked_mean(nll, mask), masked_mean((jnp.argmax(logits, -1) == targets).astype(jnp.float32), mask)


def fingerprint(tree):
    """A digest of a tree of arrays: token caches name the codec and tokenizer that made them."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def text_words(ids):
    """The word of each text token: runs of tokens between spaces count 0, 1, ...; -1 at spaces."""
    space = np.asarray(ids) == ord(" ")
    starts = ~space & np.concatenate([[True], space[:-1]])
    return np.where(space, -1, np.cumsum(starts) - 1).astype(np.int32)


def voice(record):
    """A manifest record's voice: its "voice" field (the built-in corpus: the eSpeak voice,
    whatever the pitch and rate), else its "speaker"."""
    return record.get("voice", record.get("speaker"))


def build_models(cfg):
    """{"ar": VALLEAR, "nar": VALLENAR} for model.name valle, else {"lm": DelayedLM}; model.args go to each
    model that takes them (an argument none takes is an error)."""
    dtype, remat = jnp.dtype(cfg.train.compute_dtype), cfg.train.remat
    args = dict(cfg.model.args)
    if cfg.model.name == "valle":
        classes = {"ar": VALLEAR, "nar": VALLENAR}
    elif cfg.model.name == "delayed" or speechlm.VARIANTS.get(cfg.model.name, (None,))[0] is DelayedLM:
        classes = {"lm": DelayedLM}
    else:
        raise ValueError(
            f"task tts: model.name must be valle, delayed or a DelayedLM config "
            f"({', '.join(n for n, (c, _) in speechlm.VARIANTS.items() if c is DelayedLM)}), "
            f"not {cfg.model.name!r}"
        )
    fields = {k: set(c.__dataclass_fields__) - {"parent", "name"} for k, c in classes.items()}
    unknown = set(args) - set().union(*fields.values())
    if unknown:
        raise ValueError(
            f"model.args: unknown argument(s) {sorted(unknown)}; valid: {sorted(set().union(*fields.values()))}"
        )
    base = speechlm.VARIANTS[cfg.model.name][1] if cfg.model.name in speechlm.VARIANTS else {}
    models = {
        k: c(**{**base, **{a: v for a, v in args.items() if a in fields[k]}, "dtype": dtype, "remat": remat})
        for k, c in classes.items()
    }
    t = cfg.tts
    if "ar" in models and t.max_frames % models["ar"].group_size:
        raise ValueError(
            f"tts.max_frames={t.max_frames} must be a multiple of the AR's group_size {models['ar'].group_size}"
        )
    if "ar" not in models and (t.guidance_dropout or t.guidance_scale != 1.0):
        raise ValueError(
            "tts.guidance_dropout and tts.guidance_scale guide VALL-E's AR on its text (model.name valle)"
        )
    if t.condition == "semantic" and "lm" not in models:
        raise ValueError(
            "tts.condition semantic conditions a delayed LM (AudioLM's acoustic stage); VALL-E reads text"
        )
    needed = t.semantic_clusters if t.condition == "semantic" else TEXT_VOCAB
    for m in models.values():
        vocab = getattr(m, "text_vocab_size", None) or m.cond_vocab_size
        if vocab < needed:
            raise ValueError(
                f"model.args: the conditioning vocabulary must hold {needed} "
                f"{'semantic tokens' if t.condition == 'semantic' else 'byte values'}, not {vocab}"
            )
    return models


class TTSTask(SplitSources):
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

    # -- the codec and text -------------------------------------------------------------
    @property
    def codec(self):
        """The codec, loaded on first use."""
        if self._codec is None:
            t = self.cfg.tts
            if t.codec_weights:
                codec = official_codec(t.codec_weights, t.codec_model)
            elif t.codec_run:
                trainer, params = load_run(t.codec_run, "codec", "codec of tts.codec_run")
                codec = trainer.task.codec(params)
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

    def read(self, path):
        """16 kHz mono samples of an audio file (resampled where data.resample says so)."""
        return speech.read_audio(path, speech.SAMPLE_RATE, self.cfg.data.resample)

    def text_ids(self, texts):
        """UTF-8 bytes of each text, or of its phonemes (tts.text); with word alignment the
        phonemes of each word, so that the ids hold the transcript's words between spaces."""
        if self.cfg.tts.text == "phonemes" and self.aligned:
            words = [t.split() for t in texts]
            spoken = iter(speech.phonemize([w for row in words for w in row]))
            texts = [" ".join(next(spoken).replace(" ", "") for _ in row) for row in words]
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
        )

    def semantic_tokenizer(self):
        """The semantic tokenizer: the checkpoint's (set_assets), else <tokens_dir>/semantic.npz, else
        fitted on the training split (as the corpus's tokens are prepared) and saved there."""
        if self._semantic is None:
            from trainers.semantic import SemanticTokenizer

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
        from trainers.semantic import SemanticTokenizer

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
            by_voice.setdefault(voice(r), []).append(i)
        for i, r in enumerate(kept):  # for tts.pair_prob
            r["partners"] = [j for j in by_voice[voice(r)] if j != i]
        return kept

    def _word_groups(self, record, groups):
        """The group of codes at which each word of the record's transcript begins (the first
        at 0, each after the one before), from its word_starts."""
        starts = record.get("word_starts")
        if starts is None or len(starts) != len(record["target"].split()):
            raise ValueError(
                f"record {record.get('key', record['source'])}: the AR's word_alignment needs "
                f"word_starts, the time (s) each word of the transcript begins"
                + (
                    " (a built-in corpus made before they were written has none: delete its folder "
                    "to synthesise it again)"
                    if starts is None
                    else f", one per word, not {len(starts)}"
                )
            )
        c = self.codec.config
        rate = c.sample_rate / c.hop_length / self.models["ar"].group_size
        out = np.round(np.asarray(starts, np.float64) * rate).astype(np.int32)
        out[0] = 0
        for k in range(1, len(out)):
            out[k] = max(out[k], out[k - 1] + 1)
        return np.minimum(out, max(groups - 1, 0))  # words past the audio's end: a record too short to matter

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
                        prompt_words=text_words(first["text_ids"]).max() + 1,
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

    def _words(self, record):
        """text_words and audio_words (per AR position: the word of the group it predicts; -1 on
        the prompt; one past the last word where EOS is due) of an example."""
        t, g = self.cfg.tts, self.models["ar"].group_size
        words = np.full(t.max_text_length, -1, np.int32)
        words[: len(record["text_ids"])] = text_words(record["text_ids"])
        prompt = record.get("prompt_frames", 0) // g
        target = len(record["codes"]) // g - prompt
        starts, offset = record["word_groups"], record.get("prompt_words", 0)
        audio = np.full(t.max_frames // g + 1, -1, np.int32)
        audio[prompt : prompt + target] = offset + np.searchsorted(starts, np.arange(target), side="right") - 1
        audio[prompt + target] = offset + len(starts)
        return {"text_words": words, "audio_words": audio}

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

    # -- model ------------------------------------------------------------------------
    def init(self, rng, batch):
        keys = jax.random.split(rng, len(self.models))
        return {
            "params": {
                name: model.init(key, *self._example(name, batch, key)[0])["params"]
                for (name, model), key in zip(self.models.items(), keys)
            }
        }

    def _example(self, name, batch, rng):
        """(positional inputs of model `name`, its targets, where they are scored) for a batch
        (NAR: its random stage and prompt split)."""
        text, codes, frames = batch["text"], batch["codes"], batch["frames"]
        text_valid = lengths_mask(batch["text_length"], text.shape[1])
        if name == "nar":
            prompt_frames, stage = self._nar_split(frames, rng)
            slots = jnp.arange(codes.shape[1])[None]
            targets = jnp.take_along_axis(codes, stage[:, None, None], axis=2)[..., 0]
            scored = (slots >= prompt_frames[:, None]) & (slots < frames[:, None])
            return (text, text_valid, codes, slots < frames[:, None], prompt_frames, stage), targets, scored
        if name == "ar":
            m = self.models["ar"]
            inputs, targets, scored = speechlm.ar_training_inputs(codes[..., 0], frames, m.bos, m.eos, m.group_size)
            valid = scored.reshape(scored.shape[0], -1, m.group_size).any(-1)  # per group of codes
        else:
            inputs, targets, scored = speechlm.delayed_training_inputs(codes, frames, self.codebook_size)
            valid = jnp.arange(inputs.shape[1])[None] <= (frames + self.num_codebooks - 1)[:, None]
        positions = jnp.broadcast_to(jnp.arange(valid.shape[1]), valid.shape)
        if name == "ar" and self.aligned:  # no EOS to learn: a row ends when its last word does
            scored = scored & (jnp.arange(scored.shape[1])[None] < frames[:, None])
            words = batch["audio_words"]
            return (
                (
                    inputs,
                    positions,
                    valid,
                    text,
                    text_valid,
                    batch["text_words"],
                    words,
                    speechlm.word_progress(words),
                ),
                targets,
                scored,
            )
        return (inputs, positions, valid, text, text_valid), targets, scored

    def _nar_split(self, frames, rng):
        """Per utterance: how many of its first frames (1 .. half) are the prompt, the rest the
        target, and a random stage 1..K-1 (0-based codebook index)."""
        k_prompt, k_stage = jax.random.split(rng)
        b = frames.shape[0]
        half = jnp.maximum(frames // 2, 1)
        prompt_frames = jnp.minimum(jax.random.randint(k_prompt, (b,), 0, 2**30) % half + 1, frames - 1)
        return prompt_frames, jax.random.randint(k_stage, (b,), 1, self.num_codebooks)

    def _losses(self, params, batch, rng, train):
        """(total loss, {metric: value}) of the models on the batch: each model's loss and accuracy."""
        total, metrics = 0.0, {}
        for (name, model), key in zip(self.models.items(), jax.random.split(rng, len(self.models))):
            k_split, k_drop = jax.random.split(key)
            rows = batch
            if name == "ar" and train and self.cfg.tts.guidance_dropout:  # the AR's example draws nothing from k_split
                rows = self._without_text(batch, k_split)
            args, targets, scored = self._example(name, rows, k_split)
            logits = model.apply(
                {"params": params[name]}, *args, deterministic=not train, rngs={"dropout": k_drop} if train else {}
            )
            mask = batch["mask"].reshape((-1,) + (1,) * (scored.ndim - 1))
            if name == "ar" and self.aligned:
                logits, advance = logits
                moves, moved = speechlm.advance_targets(rows["audio_words"], batch["frames"] // model.group_size)
                moved = moved * mask
                loss = masked_mean(optax.sigmoid_binary_cross_entropy(advance, moves), moved)
                metrics["ar_advance_loss"] = loss
                metrics["ar_advance_accuracy"] = masked_mean(((advance > 0) == (moves > 0)).astype(jnp.float32), moved)
                total += loss
            loss, metrics[f"{name}_accuracy"] = cross_entropy(logits, targets, scored * mask)
            metrics[f"{name}_loss"] = loss
            total += loss
        return total, metrics

    def _without_text(self, batch, rng):
        """The batch with its text (and word alignment) taken from tts.guidance_dropout of its
        rows: the unconditional model of classifier-free guidance, as generate_ar runs it. Those
        rows' `advance` is not scored (their words are -1)."""
        dropped = jax.random.bernoulli(rng, self.cfg.tts.guidance_dropout, batch["text_length"].shape)
        rows = dict(batch, text_length=jnp.where(dropped, 0, batch["text_length"]))
        if self.aligned:
            rows["audio_words"] = jnp.where(dropped[:, None], -1, batch["audio_words"])
        return rows

    def loss(self, params, batch, rng):
        total, metrics = self._losses(params, batch, rng, train=True)
        return total, {f"train/{k}": v for k, v in metrics.items()}

    def eval_outputs(self, params, batch):
        # Per-example values: each row as its own batch of one, so the split's mean is exact.
        rows = jax.tree.map(lambda x: x[:, None], batch)
        keys = jax.random.split(jax.random.PRNGKey(0), batch["mask"].shape[0])
        return jax.vmap(lambda row, key: self._losses(params, row, key, train=False)[1])(rows, keys)

    def eval_metrics(self, outputs):
        return {k: float(np.mean(v)) for k, v in outputs.items()}

    # -- zero-shot TTS ----------------------------------------------------------------------
    def prompt_pairs(self):
        """(prompt record, target record) pairs of the eval split: a record's own prompt_source
        when it has one (the built-in corpus's tts_test), else another utterance of its speaker."""
        records = speech.SpeechSource(self.cfg, self.cfg.data.eval_split).records
        if "prompt_source" in records[0]:
            return [
                ({"source": r["prompt_source"], "target": r["prompt_target"], "speaker": r.get("speaker")}, r)
                for r in records
            ]
        by_speaker = {}
        for r in records:
            by_speaker.setdefault(r.get("speaker"), []).append(r)
        return [(group[i], group[i + 1]) for group in by_speaker.values() for i in range(0, len(group) - 1, 2)]

    def synthesise(self, params, prompt_conditions, conditions, prompt_audio, rng, frames=None):
        """16 kHz waveforms continuing prompt_audio (16 kHz) as `conditions` say, each after its
        prompt's own (text ids or semantic tokens, from `conditions()`).

        A delayed LM has no end token: it draws `frames` (per utterance) or, by default, as
        many as the prompt's frames per conditioning token say."""
        t = self.cfg.tts
        ids = [self.join(p, x) for p, x in zip(prompt_conditions, conditions)]
        text = np.zeros((len(ids), max(len(i) for i in ids)), np.int32)
        for i, row in enumerate(ids):
            text[i, : len(row)] = row
        text_lengths = np.array([len(i) for i in ids])
        prompt, prompt_frames = self.encode_audio(prompt_audio)
        params = sharding.host_copy(params)
        if self.valle:
            # The AR continues a prompt of whole groups: its last frames short of a group are dropped.
            prompt_frames = prompt_frames - prompt_frames % self.models["ar"].group_size
            words = {}
            if self.aligned:
                words = {
                    "text_words": np.full(text.shape, -1, np.int32),
                    "first_word": np.array([text_words(p).max(initial=-1) + 1 for p in prompt_conditions]),
                }
                for i, row in enumerate(ids):
                    words["text_words"][i, : len(row)] = text_words(row)
                words["num_words"] = words["text_words"].max(axis=1) + 1
            first, frames = speechlm.generate_ar(
                self.models["ar"],
                params["ar"],
                text,
                text_lengths,
                prompt[..., 0],
                prompt_frames,
                rng,
                max_new_tokens=t.max_frames,
                temperature=t.temperature,
                top_k=t.top_k,
                top_p=t.top_p,
                guidance_scale=t.guidance_scale,
                **words,
            )
            frames = np.maximum(np.asarray(frames), 1)
            codes = speechlm.generate_nar(
                self.models["nar"], params["nar"], text, text_lengths, prompt, prompt_frames, first, frames
            )
        else:
            if frames is None:
                rate = prompt_frames / np.maximum([len(p) for p in prompt_conditions], 1)
                frames = np.round(rate * [len(x) for x in conditions]).astype(int)
            frames = np.clip(frames, 1, t.max_frames)
            total = prompt_frames + frames
            out = speechlm.generate_delayed(
                self.models["lm"],
                params["lm"],
                text,
                text_lengths,
                prompt,
                prompt_frames,
                total,
                rng,
                frames=int(total.max()),
                temperature=t.temperature,
                top_k=t.top_k,
                top_p=t.top_p,
            )
            out = np.asarray(out)
            codes = np.stack(
                [np.pad(o[p : p + n], ((0, t.max_frames - n), (0, 0))) for o, p, n in zip(out, prompt_frames, frames)]
            )
        codes = np.minimum(np.asarray(codes), self.codebook_size - 1)  # EOS past a row's end
        return self.decode_codes(codes, frames)

    def generate(self, params, mesh):
        t = self.cfg.tts
        pairs = self.prompt_pairs()[t.eval_offset : t.eval_offset + t.eval_examples]
        if not pairs:
            return {}, {}
        prompts, targets = [p for p, _ in pairs], [r for _, r in pairs]
        prompt_audio = [self.read(p["source"]) for p in prompts]
        reference = [self.read(r["source"]) for r in targets]
        # With semantic conditioning the tokens (and the length) come from the real recording:
        # a resynthesis in the prompt's voice, AudioLM's acoustic stage.
        semantic = t.condition == "semantic"
        frames = (
            np.array(
                [
                    -(-len(a) * self.codec.config.sample_rate // speech.SAMPLE_RATE // self.codec.config.hop_length)
                    for a in reference
                ]
            )
            if semantic
            else None
        )
        generated = self.synthesise(
            params,
            self.conditions([p["target"] for p in prompts], prompt_audio),
            self.conditions([r["target"] for r in targets], reference),
            prompt_audio,
            jax.random.PRNGKey(self.cfg.seed),
            frames,
        )
        return {}, {
            "tts_prompt": prompt_audio,
            "tts_reference": reference,
            "tts_generated": generated,
            # The real recording through the codec and back: the ceiling the LM can reach.
            "tts_codec": self.decode_codes(*self.encode_audio(reference)),
            "tts_text": [r["target"] for r in targets],
        }

    def write_artifacts(self, workdir, outputs, step):
        from jaxmodels.codec import losses
        from trainers.pictures import spectrograms_png

        if "tts_generated" not in outputs:
            return
        folder = os.path.join(workdir, "tts")
        os.makedirs(folder, exist_ok=True)
        rows = []
        for i, text in enumerate(outputs["tts_text"][:8]):
            for name in ("prompt", "reference", "generated"):
                wav = np.asarray(outputs[f"tts_{name}"][i], np.float32)
                speech.write_wav(os.path.join(folder, f"{i}_{name}.wav"), np.clip(wav, -1, 1))
                log_mel = losses.mel_spectrogram(
                    jnp.asarray(wav)[None, :, None], speech.SAMPLE_RATE, 512, 160, 400, 64
                )
                rows.append((f"{i} {name}" + (f": {text}" if name != "prompt" else ""), np.asarray(log_mel[0, 0])))
        with open(os.path.join(folder, "texts.json"), "w") as f:
            json.dump(outputs["tts_text"], f, indent=1)
        spectrograms_png(os.path.join(workdir, "tts_spectrograms.png"), rows, title=f"step {step}")
        print(f"wrote {folder}/*.wav and {os.path.join(workdir, 'tts_spectrograms.png')}")


TASK = TTSTask
