"""CosyVoice's text-to-token LM trained as upstream's TransformerLM (task: cosyvoice_llm), on a
corpus's transcripts and the S3 tokens and x-vectors that trainers.extract writes (the same
folders as task: cosyvoice_flow; jaxmodels.cosyvoice.llm):

    python -m trainers.extract s3tokens CONFIG --s3tokenizer speech_tokenizer_v1.pt --workdir TOKENS
    python -m trainers.extract xvectors CONFIG --campplus campplus_cn_common.bin --workdir XVECTORS
    python -m trainers.train CONFIG --workdir runs/llm     # data.tokens: TOKENS, data.xvectors: XVECTORS

Each example is an utterance's transcript as text ids (llm.text_tokenizer: UTF-8 bytes, ids
0-255, those of its eSpeak NG phonemes, or the byte-pair encoding a released LM was trained on,
jaxmodels.cosyvoice.text), its S3 tokens and its x-vector, padded to llm.max_text_tokens and
data.max_seconds of tokens; a longer one is bad audio (an error, or skipped under
data.on_bad_audio=skip). The loss is TransformerLM.forward's: the rows [sos, x-vector, text,
task_id, speech] predict the speech tokens and eos, cross entropy over the batch's scored
tokens. Eval reports that cross entropy and the next-token accuracy over the eval split, and for
the first llm.eval_examples eval utterances the tokens generated from their text in their
speaker's voice (upstream's sampling, a fixed key): the ratio of their count to the real one
(`eval/length_ratio`) and their edit distance to the real tokens over the real count
(`eval/token_error_rate`). With the rest of the chain named (llm.s3tokenizer_run, flow_run,
hift_run, speaker: runs trained here), eval also speaks llm.speak_pairs of the eval split's
pairs (from llm.speak_offset) zero-shot, for evals such as speech_wer and speaker_similarity
(configs/cosyvoice_speech.yaml).

With llm.instruct the LM is trained as CosyVoice-Instruct's: each transcript follows its
instruction (`instruction`: the utterance's speaking rate and pitch, speech.speaking_style) and
the LM reads no x-vector. Eval then speaks the pairs in instruct mode (the target's instruction,
the prompt's x-vector for the flow) and, for the first llm.style_pairs targets, each rate
(slow, normal, fast; normal pitch) and each pitch (low, normal, high; normal rate): the mean
duration of each rate (`eval/style/seconds_<rate>`) and the mean F0 of each pitch over voiced
frames (`eval/style/f0_<pitch>`, YIN), beside the eval split's own targets grouped by their
style (`eval/style/real_seconds_<rate>`, `eval/style/real_f0_<pitch>`)
(configs/cosyvoice_instruct_speech.yaml).

With model.args.word_alignment (VALL-E R's alignment over words, jaxmodels.cosyvoice.llm) each
utterance's record needs "word_starts" (seconds; the built-in corpus has them), the text is
read as words between spaces (UTF-8 bytes, or each word's phonemes), and the loss adds the
binary cross entropy of `advance` (whether the next token begins the next word).
"""

import dataclasses
import functools
import math
import re
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmodels import speechlm
from jaxmodels.cosyvoice import llm, text
from trainers import sharding
from trainers.config import ConfigError
from trainers.data import speech
from trainers.evaluators.text import edit_distance
from trainers.progress import progress
from trainers.tasks import SplitSources, _cosyvoice, _waveform
from trainers.tasks.tts.words import position_words, word_frames


@dataclass
class LLMTaskConfig:
    """The text ids, the examples' sizes and the eval generations."""

    # "bytes" (UTF-8, ids 0-255), "phonemes" (the UTF-8 bytes of eSpeak NG's phonemes, as the TTS
    # demo's tts.text: phonemes), or a .tiktoken ranks file: Whisper's multilingual.tiktoken
    # (CosyVoice-300M's llm.pt) or CosyVoice's multilingual_zh_ja_yue_char_del.tiktoken (its 25 Hz model's)
    text_tokenizer: str = "bytes"
    max_text_tokens: int = 200  # upstream's token_max_length filter
    eval_examples: int = 4
    # The rest of the chain, runs trained here: with them eval also speaks speak_pairs (prompt,
    # target) pairs of the eval split zero-shot from speak_offset on (speech.prompt_pairs),
    # for evals such as speech_wer and speaker_similarity, and python -m trainers.tts speaks.
    s3tokenizer_run: str = ""  # a ctc run with the S3 quantizer inside (configs/cosyvoice_s3_speech.yaml)
    flow_run: str = ""  # a cosyvoice_flow run
    hift_run: str = ""  # a hift run
    speaker: str = ""  # the speaker embedder data.xvectors was extracted with (python -m trainers.speaker)
    # The scale of the noise the flow decoder samples from: upstream's 1.0, Matcha-TTS's 0.667
    flow_temperature: float = 1.0
    # Zero-shot and cross-lingual: the flow decoder continues the prompt's tokens and mel
    # (upstream's), or, false, reads the prompt's x-vector alone (docs/cosyvoice.md measures both)
    flow_prompt: bool = True
    speak_pairs: int = 50
    speak_offset: int = 0  # the pairs spoken start here: settings are chosen on other pairs than those reported
    # CosyVoice-Instruct's training: the transcript after its speaking style's instruction, no x-vector
    instruct: bool = False
    style_pairs: int = 10  # with instruct and the chain: targets spoken in every rate and pitch at eval
    # With this probability a training example is another utterance of the same voice (speech.voice)
    # followed by this one, text ids and tokens end to end, the first's x-vector (when
    # both fit): the prompt and continuation zero-shot inference feeds the LM, which a corpus of
    # short utterances otherwise never shows it (as tts.pair_prob for VALL-E).
    pair_prob: float = 0.0
    # The share of training examples whose text (and a pair's first transcript) is dropped, so that the
    # LM also learns the text-free distribution classifier-free guidance draws against
    # (model.args.guidance_scale; as tts.guidance_dropout for VALL-E)
    guidance_dropout: float = 0.0


SECTIONS = {"data": _cosyvoice.CosyVoiceDataConfig, "llm": LLMTaskConfig}


SPECIAL = re.compile(r"(<\|[^|]*\|>)")  # a special token such as <|endofprompt|>


@functools.lru_cache(maxsize=1 << 16)  # transcripts repeat every epoch
def _phonemes(part: str, by_word: bool) -> str:
    if SPECIAL.fullmatch(part):
        return part
    return (speech.phonemize_words if by_word else speech.phonemize)([part])[0]


class Phonemes(text.Utf8Bytes):
    """The UTF-8 bytes of eSpeak NG's phonemes of the text as its ids; special tokens are kept
    as written. ``by_word``: each word's phonemes, between spaces (speech.phonemize_words)."""

    def __init__(self, by_word: bool = False):
        super().__init__()
        self.by_word = by_word

    def encode(self, sentence: str, allowed_special="all") -> list[int]:
        return super().encode("".join(_phonemes(p, self.by_word) for p in SPECIAL.split(sentence) if p.strip()))


class TextIds:
    """Text -> ids, and how many ids there are; ``by_word``: phonemes word by word (word
    alignment). Pickled as its spec (grain's workers load it again)."""

    def __init__(self, spec: str, by_word: bool = False):
        self.spec, self.by_word = spec, by_word
        try:
            self.tokenizer = Phonemes(by_word) if spec == "phonemes" else text.load(spec)
        except (OSError, ValueError) as e:
            raise ConfigError(f"llm.text_tokenizer: {e}") from None
        self.size = self.tokenizer.n_vocab

    def encode(self, transcript: str) -> list[int]:
        return text.encode(self.tokenizer, transcript)

    def __reduce__(self):
        return TextIds, (self.spec, self.by_word)


def instruction(style: dict) -> str:
    """The LM's instruction of a speaking style (speech.speaking_style's), ended as
    CosyVoice-Instruct's instructions are: "slow speed, high pitch<|endofprompt|>"."""
    return f"{style['rate']} speed, {style['pitch']} pitch<|endofprompt|>"


class Transcript:
    """Record -> {text, text_length, speech, speech_length, xvector, mask}, padded to fixed sizes;
    with `instruct`, the text is the record's instruction and transcript; with `aligned` also
    text_words and speech_words (llm.TransformerLM.sequence's, from the record's word_starts).
    After `pair_with`, with probability pair_prob (given an rng) another record of the same voice
    comes first (its tokens told no word)."""

    def __init__(self, cfg, text_ids: TextIds, tokens, xvectors, speech_size: int, width: int, aligned: bool):
        self.text_ids, self.tokens, self.xvectors = text_ids, tokens, xvectors
        self.on_bad_audio, self.instruct, self.aligned = cfg.data.on_bad_audio, cfg.llm.instruct, aligned
        self.text_size, self.speech_size, self.width = cfg.llm.max_text_tokens, speech_size, width
        self.pair_prob, self.voices = 0.0, {}

    def pair_with(self, records, pair_prob: float):
        self.pair_prob = pair_prob
        for r in records:  # (key, transcript): what a pair reads, light to pickle into the data workers
            self.voices.setdefault(speech.voice(r), []).append((r["key"], r["target"]))

    def __call__(self, record, rng):
        if rng is not None and self.pair_prob and rng.random() < self.pair_prob:
            partners = [p for p in self.voices.get(speech.voice(record), ()) if p[0] != record["key"]]
            if partners:
                key, said = partners[int(rng.integers(len(partners)))]
                # ids end to end, as the chain's zero-shot reads a prompt's transcript and the text
                first, second = self.text_ids.encode(said), self.text_ids.encode(record["target"])
                prompt, own = self.tokens[key], self.tokens[record["key"]]
                if len(first) + len(second) <= self.text_size and len(prompt) + len(own) <= self.speech_size:
                    example = self._example(first + second, np.concatenate([prompt, own]), key)
                    if self.aligned:
                        self._align(example, record, second, len(own), speechlm.text_words(first), len(prompt))
                    return example
        return self._single(record)

    def _align(self, example, record, ids, tokens: int, prompt_words=(), prompt_tokens: int = 0):
        """The example's text_words and speech_words: the prompt's words (its transcript's, ahead
        of the record's ids) and then the record's; the prompt's tokens told none, the record's
        their word (from its word_starts), one past its last where eos is due."""
        offset = int(np.max(prompt_words, initial=-1)) + 1
        words = speechlm.text_words(ids)
        starts = word_frames(record, self.tokens.frame_rate, tokens)
        if words.max(initial=-1) + 1 != len(starts):
            raise ValueError(
                f"record {record['key']}: its text ids hold {words.max(initial=-1) + 1} words between spaces, "
                f"its transcript {len(starts)}"
            )
        n = len(prompt_words)
        example["text_words"][:n] = prompt_words
        example["text_words"][n : n + len(ids)] = np.where(words >= 0, words + offset, -1)
        example["speech_words"] = position_words(self.speech_size + 1, prompt_tokens, tokens, starts, offset)

    def _empty(self):
        return {
            "text": np.zeros(self.text_size, np.int32),
            "text_length": np.int32(0),
            "speech": np.zeros(self.speech_size, np.int32),
            "speech_length": np.int32(0),
            "xvector": np.zeros(self.width, np.float32),
            "mask": np.float32(0.0),
        } | (
            {
                "text_words": np.full(self.text_size, -1, np.int32),
                "speech_words": np.full(self.speech_size + 1, -1, np.int32),
            }
            if self.aligned
            else {}
        )

    def _single(self, record):
        asked = self.text_ids.encode(instruction(speech.speaking_style(record))) if self.instruct else []
        said = self.text_ids.encode(record["target"])
        text, tokens = asked + said, self.tokens[record["key"]]
        if len(text) > self.text_size or len(tokens) > self.speech_size:
            if self.on_bad_audio == "skip":
                return self._empty()
            raise ValueError(
                f"utterance {record['key']!r}: {len(text)} text ids and {len(tokens)} speech tokens; the "
                f"examples hold {self.text_size} (llm.max_text_tokens) and {self.speech_size} (data.max_seconds)"
            )
        example = self._example(text, tokens, record["key"])
        if self.aligned:  # the instruction's words come first, as a pair's prompt transcript's; no token's
            self._align(example, record, said, len(tokens), speechlm.text_words(asked))
        return example

    def _example(self, text, tokens, xvector_key):
        out = self._empty()
        out["text"][: len(text)] = text
        out["speech"][: len(tokens)] = tokens
        out.update(text_length=np.int32(len(text)), speech_length=np.int32(len(tokens)), mask=np.float32(1.0))
        if self.width:  # CosyVoice 2's LM and an -Instruct one read none
            out["xvector"][:] = _cosyvoice.xvector(self.xvectors, xvector_key, self.width)
        return out


class LLMTask(SplitSources):
    def __init__(self, cfg):
        self.cfg = cfg
        d = cfg.data
        self.config = llm.config(cfg.model.name, **cfg.model.args)
        # CosyVoice 2's Qwen2LM: Qwen2's token table for the text, no x-vector
        self.qwen2 = isinstance(self.config, llm.Qwen2LMConfig)
        text_size, size_key = (
            (self.config.llm.vocab_size, "llm.vocab_size")
            if self.qwen2
            else (self.config.text_token_size, "text_token_size")
        )
        self.aligned = getattr(self.config, "word_alignment", False)
        if self.aligned and cfg.llm.text_tokenizer not in ("bytes", "phonemes"):
            raise ConfigError(
                "model.args.word_alignment reads the text's words between spaces: llm.text_tokenizer bytes or phonemes"
            )
        self.text_ids = text_ids = TextIds(cfg.llm.text_tokenizer, by_word=self.aligned)
        if text_size < text_ids.size:
            raise ConfigError(
                f"model.args.{size_key}: {text_size}, fewer than the {text_ids.size} ids "
                f"of llm.text_tokenizer {cfg.llm.text_tokenizer!r}"
            )
        model = llm.Qwen2LM if self.qwen2 else llm.TransformerLM
        self.model = model(self.config, jnp.dtype(cfg.train.compute_dtype), cfg.train.remat)
        self.reads_xvector = not (self.qwen2 or cfg.llm.instruct)
        width = self.config.spk_embed_dim if self.reads_xvector else 0
        transforms = []
        for split in (d.train_split, d.eval_split):
            tokens, xvectors = _cosyvoice.extracted(
                cfg, split, self.config.speech_token_size, xvectors=self.reads_xvector
            )
            size = math.ceil(d.max_seconds * tokens.frame_rate)
            transforms.append(Transcript(cfg, text_ids, tokens, xvectors, size, width, self.aligned))
        self.train_transform, self.eval_transform = transforms
        if cfg.llm.pair_prob > 0:
            if cfg.llm.instruct:
                raise ConfigError("llm.pair_prob: pairs are zero-shot prompts; an instruct LM speaks without one")
            if d.batch_seconds > 0:
                raise ConfigError("llm.pair_prob with data.batch_seconds: a pair outgrows its utterance's bucket")
            self.train_transform.pair_with(self.train_source().records, cfg.llm.pair_prob)
        chain = [cfg.llm.s3tokenizer_run, cfg.llm.flow_run, cfg.llm.hift_run, cfg.llm.speaker]
        if any(chain) and not all(chain):
            raise ConfigError("llm.s3tokenizer_run, llm.flow_run, llm.hift_run and llm.speaker: give all or none")
        self._voice = None

    def make_source(self, split):
        return speech.SpeechSource(self.cfg, split)

    def length_buckets(self):
        rate = self.train_transform.tokens.frame_rate
        crop = lambda samples: {"speech": math.ceil(samples / speech.SAMPLE_RATE * rate)}  # noqa: E731
        return speech.duration_buckets(self.cfg.data, self.train_source(), crop)

    def example_batch(self, n):
        t = self.train_transform
        return {
            "text": np.zeros((n, t.text_size), np.int32),
            "text_length": np.full((n,), t.text_size, np.int32),
            "speech": np.zeros((n, t.speech_size), np.int32),
            "speech_length": np.full((n,), t.speech_size, np.int32),
            "xvector": np.ones((n, t.width), np.float32),
            "mask": np.ones((n,), np.float32),
        } | (
            {
                "text_words": np.zeros((n, t.text_size), np.int32),
                "speech_words": np.zeros((n, t.speech_size + 1), np.int32),
            }
            if self.aligned
            else {}
        )

    def _inputs(self, batch):
        """The model's inputs of a batch; rows of mask 0 have no text and no speech (and no words)."""
        real = batch["mask"] > 0
        text_len = jnp.where(real, batch["text_length"], 0)
        speech_len = jnp.where(real, batch["speech_length"], 0)
        inputs = batch["text"], text_len, batch["speech"], speech_len, batch["xvector"] if self.reads_xvector else None
        if self.aligned:
            inputs += (batch["text_words"], jnp.where(real[:, None], batch["speech_words"], -1))
        return inputs

    def init(self, rng, batch):
        return self.model.init(rng, *self._inputs(batch))

    def convert_weights(self, state_dict):
        """A released llm.pt (CosyVoice-300M's, or CosyVoice 2's)."""
        return (llm.qwen2_from_torch if self.qwen2 else llm.from_torch)(state_dict, self.config)

    def _scores(self, params, batch, rng=None):
        """Per row: the speech tokens' summed cross entropy ("nll"), their count, the right argmaxes;
        with word alignment also advance's ("advance_nll", "advance_count", "advance_right"). CosyVoice
        2's LM in training (an rng) packs half its rows as upstream's bistream ones (text and speech
        interleaved, llm.Qwen2LM.training_rows); evaluation packs every row unistream. In training,
        llm.guidance_dropout of the rows have no text (nor words)."""
        inputs = self._inputs(batch)
        variables = {"params": params}
        if rng is not None and self.cfg.llm.guidance_dropout > 0:
            rng, key = jax.random.split(rng)
            dropped = jax.random.uniform(key, inputs[1].shape) < self.cfg.llm.guidance_dropout
            inputs = (inputs[0], jnp.where(dropped, 0, inputs[1]), *inputs[2:])
            if self.aligned:
                inputs = (*inputs[:6], jnp.where(dropped[:, None], -1, inputs[6]))
        out = {}
        if self.qwen2:
            bistream = (
                jnp.zeros(inputs[0].shape[:1], bool) if rng is None else jax.random.uniform(rng, inputs[1].shape) < 0.5
            )
            x, length, target = self.model.apply(variables, *inputs[:4], bistream, method="training_rows")
            logits = self.model.apply(variables, x, length, method="logits")
        else:
            logits = self.model.apply(variables, *inputs)
            if self.aligned:
                logits, advance = logits
                out = self._advance_scores(advance, *inputs)
            target = llm.targets(*inputs[:4], eos=self.config.speech_token_size, speaker=self.reads_xvector)
        target = jnp.where(batch["mask"][:, None] > 0, target, llm.IGNORE)  # a skipped row scores nothing
        return dict(zip(("nll", "count", "right"), llm.scores(logits, target))) | out

    def _advance_scores(self, advance, text, text_len, speech, speech_len, xvector, text_words, speech_words):
        """Per row: advance's summed binary cross entropy at the positions from task_id on that
        predict a token of a word, their count and the right signs."""
        task = (2 if self.reads_xvector else 1) + text_len  # task_id's slot
        slots = jnp.minimum(task[:, None] + jnp.arange(speech_words.shape[1]), advance.shape[1] - 1)
        advance = jnp.take_along_axis(advance, slots, axis=1)
        moves, scored = speechlm.advance_targets(speech_words, speech_len)
        nll = optax.sigmoid_binary_cross_entropy(advance, moves) * scored
        right = ((advance > 0) == (moves > 0)) & scored
        return {"advance_nll": nll.sum(1), "advance_count": scored.sum(1), "advance_right": right.sum(1)}

    def loss(self, params, batch, rng, step):
        scores = {k: jnp.sum(v) for k, v in self._scores(params, batch, rng).items()}
        count = jnp.maximum(scores["count"], 1)
        loss, metrics = scores["nll"] / count, {"train/accuracy": scores["right"] / count}
        if self.aligned:
            moved = jnp.maximum(scores["advance_count"], 1)
            metrics["train/advance_loss"] = scores["advance_nll"] / moved
            metrics["train/advance_accuracy"] = scores["advance_right"] / moved
            loss = loss + metrics["train/advance_loss"]
        return loss, metrics | {"train/skipped": jnp.sum(1.0 - batch["mask"])}

    def eval_outputs(self, params, batch):
        return self._scores(params, batch)

    def eval_metrics(self, outputs):
        totals = {k: float(np.sum(v)) for k, v in outputs.items()}
        count = max(totals["count"], 1.0)
        metrics = {"loss": totals["nll"] / count, "accuracy": totals["right"] / count}
        if self.aligned:
            moved = max(totals["advance_count"], 1.0)
            metrics["advance_loss"] = totals["advance_nll"] / moved
            metrics["advance_accuracy"] = totals["advance_right"] / moved
        return metrics

    def generate(self, params, mesh):
        """Tokens of the first llm.eval_examples eval utterances, generated from their text alone
        with their x-vector (with llm.instruct: after their instruction, the prompt text as
        upstream's inference gives it, so that the length limits count the transcript only),
        against their real tokens."""
        source = self.eval_source()
        records = [source[i] for i in range(min(self.cfg.llm.eval_examples, len(source)))]
        rows = [(r, self.eval_transform(r, None)) for r in records]
        rows = [(record, row) for record, row in rows if row["mask"] > 0]
        if not rows:
            return {}, {}
        text, prompt_text = np.zeros((2, len(rows), self.cfg.llm.max_text_tokens), np.int32)
        text_length, prompt_length = np.zeros((2, len(rows)), np.int32)
        instruct = self.cfg.llm.instruct
        for i, (record, row) in enumerate(rows):
            asked = len(self.text_ids.encode(instruction(speech.speaking_style(record)))) if instruct else 0
            n = row["text_length"]
            prompt_text[i, :asked], text[i, : n - asked] = row["text"][:asked], row["text"][asked:n]
            text_length[i], prompt_length[i] = n - asked, asked
        rows = [row for _, row in rows]
        batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        empty = np.zeros((len(rows), 1), np.int32), np.zeros(len(rows), np.int32)
        words = {}
        if self.aligned:  # each text's words counted from 0, as the chain gives them
            words = dict(text_words=_words(text, text_length), prompt_text_words=_words(prompt_text, prompt_length))
        tokens, count = llm.generate(
            self.model,
            sharding.host_copy(params),
            jax.random.key(0),
            text,
            text_length,
            prompt_text,
            prompt_length,
            *empty,
            batch["xvector"] if self.reads_xvector else None,
            max_new_tokens=self.train_transform.speech_size,
            **words,
        )
        tokens, count = np.asarray(tokens), np.asarray(count)
        real = [r["speech"][: r["speech_length"]] for r in rows]
        generated = [t[:n] for t, n in zip(tokens, count)]
        metrics = {
            "length_ratio": float(np.mean([len(g) / max(len(r), 1) for g, r in zip(generated, real)])),
            "token_error_rate": float(sum(edit_distance(list(r), list(g)) for r, g in zip(real, generated)))
            / max(sum(len(r) for r in real), 1),
        }
        if not self.cfg.llm.flow_run:
            return metrics, {}
        if self.cfg.llm.instruct:
            metrics.update(self.style_control(params))
        return metrics, self.speak(params)

    def voice(self, params):
        """The chain (jaxmodels.cosyvoice.pipeline.CosyVoice) of these LM params and the runs
        llm.s3tokenizer_run, flow_run, hift_run and speaker name (loaded once)."""
        c = self.cfg.llm
        if not c.flow_run:
            raise ConfigError("speaking needs llm.s3tokenizer_run, llm.flow_run, llm.hift_run and llm.speaker")
        if self._voice is None:
            self._voice = _cosyvoice.voice_from_runs(
                self,
                c.s3tokenizer_run,
                c.flow_run,
                c.hift_run,
                c.speaker,
                flow_temperature=c.flow_temperature,
                flow_prompt=c.flow_prompt,
            )
        return dataclasses.replace(self._voice, lm_params=sharding.host_copy(params))

    def _say(self, voice, prompt, target, key, style=None):
        """The target's text in the prompt's voice at 16 kHz: zero-shot, or with llm.instruct in
        instruct mode (`style`, or the target's own, as the instruction; the prompt's x-vector)."""
        wav_16k, wav_out = _cosyvoice.prompt_audio(prompt["source"], voice.sample_rate)
        if self.cfg.llm.instruct:
            asked = instruction(style or speech.speaking_style(target))
            audio = voice.instruct(target["target"], asked, voice.xvector(wav_16k), key)
        else:
            audio = voice.zero_shot(target["target"], prompt["target"], wav_16k, wav_out, key)
        return wav_16k, speech.resampled(audio, voice.sample_rate, speech.SAMPLE_RATE)

    def speak(self, params):
        """The eval split's llm.speak_pairs targets from llm.speak_offset on, spoken in their prompts'
        voices (16 kHz; zero-shot, or instruct mode): the outputs speech_wer and speaker_similarity
        read, as task tts gives them. The chain runs one utterance at a time on this process's first
        device, where its helpers sit."""
        c = self.cfg.llm
        pairs = speech.prompt_pairs(self.eval_source().records)[c.speak_offset : c.speak_offset + c.speak_pairs]
        out = {"tts_prompt": [], "tts_reference": [], "tts_generated": [], "tts_text": []}
        with sharding.first_device():
            voice = self.voice(params)
            keys = jax.random.split(jax.random.key(self.cfg.seed), len(pairs))
            for (prompt, target), key in progress(zip(pairs, keys), len(pairs), "speaking"):
                wav_16k, audio = self._say(voice, prompt, target, key)
                out["tts_generated"].append(audio)
                out["tts_prompt"].append(wav_16k)
                out["tts_reference"].append(speech.read_audio(target["source"], speech.SAMPLE_RATE, resample=True))
                out["tts_text"].append(target["target"])
        return out

    @functools.cached_property
    def _real_styles(self):
        """The eval split's own targets' mean duration per rate and mean voiced F0 per pitch (read once)."""
        seconds, pitch = {}, {}
        for _, target in speech.prompt_pairs(self.eval_source().records):
            real = speech.read_audio(target["source"], speech.SAMPLE_RATE, resample=True)
            own = speech.speaking_style(target)
            seconds.setdefault(own["rate"], []).append(len(real) / speech.SAMPLE_RATE)
            pitch.setdefault(own["pitch"], []).append(_mean_f0(real))
        metrics = {f"style/real_seconds_{k}": float(np.mean(v)) for k, v in seconds.items()}
        return metrics | {f"style/real_f0_{k}": float(np.mean(v)) for k, v in pitch.items()}

    def style_control(self, params):
        """How the speech follows the instruction: the first llm.style_pairs targets spoken at
        each rate (normal pitch) and each pitch (normal rate), their mean duration per rate and
        mean voiced F0 per pitch; beside them the eval split's own targets, grouped by their style."""
        pairs = speech.prompt_pairs(self.eval_source().records)[: self.cfg.llm.style_pairs]
        asked = [{"rate": r, "pitch": "normal"} for r in speech.STYLES["rate"]]
        asked += [{"rate": "normal", "pitch": p} for p in speech.STYLES["pitch"] if p != "normal"]
        seconds, pitch = {}, {}
        with sharding.first_device():
            voice = self.voice(params)
            keys = jax.random.split(jax.random.key(self.cfg.seed + 1), len(pairs))
            for (prompt, target), key in progress(zip(pairs, keys), len(pairs), "speaking each style"):
                for style in asked:
                    _, audio = self._say(voice, prompt, target, key, style)
                    if style["pitch"] == "normal":
                        seconds.setdefault(style["rate"], []).append(len(audio) / speech.SAMPLE_RATE)
                    if style["rate"] == "normal":
                        pitch.setdefault(style["pitch"], []).append(_mean_f0(audio))
        metrics = {f"style/seconds_{k}": float(np.mean(v)) for k, v in seconds.items()}
        metrics.update({f"style/f0_{k}": float(np.mean(v)) for k, v in pitch.items()})
        return metrics | self._real_styles

    def write_artifacts(self, workdir, outputs, step):
        """The spoken pairs' audio and spectrograms, where eval spoke them."""
        _waveform.write_spoken(workdir, outputs, step)


def _words(ids, lengths):
    """The word of each of the rows' first `lengths` ids (speechlm.text_words), -1 past them."""
    words = np.full(ids.shape, -1, np.int32)
    for i, n in enumerate(lengths):
        words[i, :n] = speechlm.text_words(ids[i, :n])
    return words


def _mean_f0(audio) -> float:
    """The mean YIN F0 over the voiced frames of a 16 kHz waveform (0 where none is voiced)."""
    from trainers.tasks.hift import yin_f0

    track = yin_f0(audio, speech.SAMPLE_RATE, 160, 50.0, 500.0)
    return float(np.mean(track[track > 0])) if np.any(track > 0) else 0.0


TASK = LLMTask
