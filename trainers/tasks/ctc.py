"""Speech recognition with CTC: the SenseVoice-style recogniser, or a HuBERT / wav2vec 2.0
encoder with a linear head (model.name hubert_* or wav2vec2_*: transformers' *ForCTC).

Records carry raw audio padded to data.max_seconds and token ids; the front end
(Kaldi fbank, low frame rate, global CMVN; in training band-limiting and noise, dither
and SpecAugment) runs on device inside the jitted step. An SSL encoder reads the waveform
itself; its SpecAugment masks spans of its frames with its learned embedding
(speech.mask_time_prob, mask_time_length), and model.init_from may be a pretrained encoder
alone (transformers' HubertModel / Wav2Vec2Model, or trainers.export of a hubert run): the
head then starts from its initialisation. Eval decodes greedily and with
prefix beam search (with an n-gram LM when configured) and reports word error rates; the
pictures are a spectrogram of one utterance with its forced-aligned tokens.

Tokens: "chars" (the transcripts' characters, "|" for the space) or "words" (the
training transcripts' words), both with <blank> = 0 and <unk> = 1; "sentencepiece": a
SentencePiece model's pieces (speech.bpe_model, e.g. SenseVoice's
chn_jpn_yue_eng_ko_spectok.bpe.model; id 0 is the blank); or "pieces": a given sub-word
list (speech.token_list; its first entry is the blank), text split by longest match with
"▁" starting each word. With speech.prompts, the four SenseVoice query outputs are
trained against <|lang|>, <|emotion|>, <|event|> and <|textnorm|> tokens from the
manifest fields language / emotion / event / textnorm (defaults en, NEUTRAL, Speech,
woitn), which join the vocabulary; one language query in five is "auto", as FunASR's.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels import asr, ssl
from jaxmodels.ctc import (
    NGramLM,
    WordNGramLM,
    beam_search,
    ctc_loss,
    forced_align,
    greedy_decode,
    paddings_from_lengths,
    read_arpa,
    train_ngram,
    write_arpa,
)
from trainers import files, sharding
from trainers.cli import InputError
from trainers.data import speech
from trainers.data.speech import AudioDataConfig
from trainers.evaluators.text import error_rates
from trainers.runs import load_run
from trainers.tasks import SplitSources


@dataclass
class SpeechConfig:
    """Speech recognition (task: ctc): front end, tokens, augmentation and decoding."""

    # The CTC vocabulary: "words" or "chars" of the training transcripts; "sentencepiece":
    # the SentencePiece model in bpe_model; or "pieces": the sub-word list in token_list (a
    # JSON list or one token per line, "▁" marking word starts), text split by longest match.
    tokens: Literal["words", "chars", "pieces", "sentencepiece"] = "chars"
    token_list: str = ""
    bpe_model: str = ""
    cmvn_file: str = ""  # FunASR's am.mvn; empty: estimated from the training audio (cmvn_utterances)
    num_mel_bins: int = 80
    lfr_m: int = 7  # low frame rate: stack lfr_m frames every lfr_n (SenseVoice: 7, 6)
    lfr_n: int = 6
    dither: float = 1.0  # training only, as FunASR's front end
    cmvn_utterances: int = 500  # training utterances the global mean and variance come from
    num_freq_masks: int = 1  # SpecAugment, training only (0 masks: off)
    freq_mask_width: int = 30
    num_time_masks: int = 1
    time_mask_width: int = 12
    # A hubert/wav2vec2 encoder's SpecAugment in training (transformers' fine-tuning settings):
    # spans of mask_time_length frames, about mask_time_prob of them, get the mask embedding.
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    # Training only: each utterance low-passed (cutoff uniform in lowpass_hz) with this
    # probability and, apart, given white noise (SNR uniform in noise_snr_db); 0: off.
    degrade_prob: float = 0.0
    lowpass_hz: tuple[float, float] = (2000.0, 8000.0)
    noise_snr_db: tuple[float, float] = (5.0, 40.0)
    max_label_length: int = 64
    prompts: bool = False  # SenseVoice's language/emotion/event/textnorm queries and their loss
    beam_size: int = 8  # eval: greedy and prefix beam search WER
    lm_order: int = 0  # > 0: an n-gram trained on the training transcripts, fused in the beam
    lm_path: str = ""  # or an ARPA file
    lm_words: bool = (
        False  # the n-gram is over words, scored as each is spelt (chars/pieces); else over the CTC tokens
    )
    lm_weight: float = 0.5
    length_bonus: float = 0.0
    # CosyVoice's S3 tokenizer trained inside the recogniser (model.args.encoder_conf's
    # quantizer_layer and codebook_size): the commitment loss's weight (VQ-VAE's beta).
    commitment_weight: float = 0.25
    # A run's folder whose tokens.json, cmvn.npz and lm.arpa (written at eval) replace
    # building them from the training data (transcription reads the run's own).
    assets: str = ""


SECTIONS = {"data": AudioDataConfig, "speech": SpeechConfig}

BLANK, UNK = "<blank>", "<unk>"
# The prompt frames' targets in their order (FunASR's: language, emotion, event, textnorm)
# with the manifest field each comes from and its default. FunASR's manifests name them
# text_language, emo_target, event_target and with_or_wo_itn, as tags ("<|en|>").
PROMPT_FIELDS = (("language", "en"), ("emotion", "NEUTRAL"), ("event", "Speech"), ("textnorm", "woitn"))
FUNASR_FIELDS = {
    "language": "text_language",
    "emotion": "emo_target",
    "event": "event_target",
    "textnorm": "with_or_wo_itn",
}


def prompt_tags(record: dict) -> list[str]:
    """The four prompt targets of a manifest record, as tags: ["<|en|>", "<|NEUTRAL|>", ...]."""
    return [
        f"<|{record[k]}|>" if k in record else record.get(FUNASR_FIELDS[k], f"<|{default}|>")
        for k, default in PROMPT_FIELDS
    ]


AUTO_LANGUAGE_RATE = 0.2  # training: the language query's chance of being "auto" (FunASR's)


class Tokenizer:
    def __init__(self, tokens: list[str], unit: str):
        self.tokens, self.unit = tokens, unit
        self.index = {t: i for i, t in enumerate(tokens)}
        self.longest = max(len(t) for t in tokens)

    @classmethod
    def from_list(cls, path: str):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        tokens = json.loads(text) if text.lstrip().startswith("[") else text.splitlines()
        if len(tokens) < 2 or len(set(tokens)) != len(tokens):
            raise ValueError(f"{path}: a token list needs at least two distinct tokens, without repeats")
        return cls(tokens, "pieces")

    @classmethod
    def build(cls, texts, unit: str, extra=()):
        symbols = set()
        for text in texts:
            symbols.update(cls.split(text, unit))
        return cls([BLANK, UNK] + sorted(symbols) + sorted(set(extra)), unit)

    @staticmethod
    def split(text: str, unit: str) -> list[str]:
        if unit == "words":
            return text.split()
        return list(" ".join(text.split()).replace(" ", "|"))

    def encode(self, text: str) -> list[int]:
        if self.unit != "pieces":
            return [self.index.get(s, 1) for s in self.split(text, self.unit)]
        ids, unk = [], self.index.get("<unk>", 1)
        for word in text.split():
            rest = "▁" + word
            while rest:
                for n in range(min(len(rest), self.longest), 0, -1):
                    if rest[:n] in self.index:
                        ids.append(self.index[rest[:n]])
                        rest = rest[n:]
                        break
                else:  # no piece starts here: one unknown, then go on
                    ids.append(unk)
                    rest = rest[1:]
        return ids

    def decode(self, ids) -> str:
        if self.unit == "pieces":
            return "".join(self.tokens[i] for i in ids if i > 0).replace("▁", " ").strip()
        symbols = [self.tokens[i] for i in ids if i > 1]
        return " ".join(symbols) if self.unit == "words" else "".join(symbols).replace("|", " ")


class SentencePieceTokenizer:
    """A SentencePiece model's pieces as the CTC vocabulary, encoded and decoded by the
    sentencepiece library itself (id 0, SenseVoice's <unk>, is the blank)."""

    unit = "sentencepiece"

    def __init__(self, path: str):
        import sentencepiece

        if not os.path.isfile(path):
            raise InputError(f"speech.bpe_model: no SentencePiece model at {path!r}")
        try:
            self.processor = sentencepiece.SentencePieceProcessor(model_file=path)
        except (OSError, RuntimeError) as e:
            raise InputError(f"speech.bpe_model: {path} is not a SentencePiece model: {e}") from None
        self.tokens = [self.processor.IdToPiece(i) for i in range(self.processor.GetPieceSize())]
        self.index = {t: i for i, t in enumerate(self.tokens)}

    def encode(self, text: str) -> list[int]:
        return self.processor.EncodeAsIds(text)

    def decode(self, ids) -> str:
        return self.processor.DecodeIds([int(i) for i in ids])


class AudioTransform:
    """Manifest record -> fixed-shape arrays: audio padded to max_seconds, token ids."""

    def __init__(self, cfg, tokenizer: Tokenizer, prompt_ids=None):
        d = cfg.data
        self.max_samples = int(d.max_seconds * speech.SAMPLE_RATE)
        self.max_labels = cfg.speech.max_label_length
        self.on_bad_audio, self.resample = d.on_bad_audio, d.resample
        self.tokenizer, self.prompt_ids = tokenizer, prompt_ids

    def __call__(self, record, rng):
        audio = np.zeros(self.max_samples, np.float32)
        labels = np.zeros(self.max_labels, np.int32)
        out = {
            "audio": audio,
            "audio_length": np.int32(0),
            "labels": labels,
            "label_length": np.int32(0),
            "mask": np.float32(0.0),
        }
        if self.prompt_ids is not None:
            out["prompts"] = np.array(self.prompt_ids(record), np.int32)
        try:
            samples = speech.read_audio(record["source"], speech.SAMPLE_RATE, self.resample)
            if len(samples) > self.max_samples:
                raise ValueError(
                    f"{record['source']}: {len(samples) / speech.SAMPLE_RATE:.2f} s is longer than "
                    f"data.max_seconds={self.max_samples / speech.SAMPLE_RATE}"
                )
            ids = self.tokenizer.encode(record["target"])
            if len(ids) > self.max_labels:
                raise ValueError(
                    f"{record['source']}: {len(ids)} tokens, more than speech.max_label_length={self.max_labels}"
                )
        except ValueError:
            if self.on_bad_audio == "skip":
                return out  # mask 0: counted as skipped, never trained on
            raise
        audio[: len(samples)] = samples
        labels[: len(ids)] = ids
        out.update(audio_length=np.int32(len(samples)), label_length=np.int32(len(ids)), mask=np.float32(1.0))
        return out


QUANTIZER = "quantizer"  # the model state: the S3 quantizer's codebook (its "state" collection)


class CTCTask(SplitSources):
    ema_state = ()  # the codebook moves by its own averages

    def __init__(self, cfg):
        self.cfg = cfg
        s = cfg.speech
        if s.tokens == "sentencepiece":
            if not s.bpe_model:
                raise ValueError("speech.tokens: sentencepiece needs speech.bpe_model (a SentencePiece .model file)")
            self.tokenizer = SentencePieceTokenizer(s.bpe_model)
        elif s.assets:
            with open(os.path.join(s.assets, "tokens.json")) as f:
                saved = json.load(f)
            self.tokenizer = Tokenizer(saved["tokens"], saved["unit"])
        elif s.tokens == "pieces":
            if not s.token_list:
                raise ValueError("speech.tokens: pieces needs speech.token_list (a JSON list or one token per line)")
            self.tokenizer = Tokenizer.from_list(s.token_list)
        else:
            records = self.train_source().records
            extra = [tag for r in records for tag in prompt_tags(r)] if s.prompts else ()
            self.tokenizer = Tokenizer.build([r["target"] for r in records], s.tokens, extra)
        prompt_ids = None
        if s.prompts:
            index = self.tokenizer.index
            prompt_ids = lambda r: [index.get(tag, 1) for tag in prompt_tags(r)]  # noqa: E731
            # Token id of <|en|>, <|woitn|>, ... -> row of the model's query table (0: "auto").
            self._query_table = np.zeros(len(self.tokenizer.tokens), np.int32)
            for name, row in {**asr.LANGUAGE_QUERY, **asr.TEXTNORM_QUERY}.items():
                if f"<|{name}|>" in index:
                    self._query_table[index[f"<|{name}|>"]] = row
        self.train_transform = AudioTransform(cfg, self.tokenizer, prompt_ids)
        self.eval_transform = self.train_transform
        # A HuBERT / wav2vec 2.0 encoder reads the waveform: no filterbank, statistics or prompts.
        self.ssl = cfg.model.name in ssl.VARIANTS and cfg.model.name not in ssl.CLASSES
        if self.ssl:
            if s.prompts:
                raise ValueError(f"speech.prompts: SenseVoice's queries; a {cfg.model.name} recogniser has none")
            encoder = ssl.create(
                cfg.model.name, **cfg.model.args, dtype=jnp.dtype(cfg.train.compute_dtype), remat=cfg.train.remat
            )
            self.model = ssl.SSLForCTC(encoder, len(self.tokenizer.tokens))
            self.frame_seconds = float(np.prod(encoder.conv_stride)) / speech.SAMPLE_RATE
            self.cmvn = None
            self.quantizer = False
        else:
            self._sensevoice(cfg)
        if s.assets:
            arpa = os.path.join(s.assets, "lm.arpa")
            self.lm_model = read_arpa(arpa) if os.path.isfile(arpa) else None
        else:
            self.lm_model = self._language_model()
        self.lm = None
        if self.lm_model and s.lm_words and s.tokens != "words":
            self.lm = WordNGramLM.create(self.lm_model, self.tokenizer.tokens)
        elif self.lm_model:
            self.lm = NGramLM.create(self.lm_model, self.tokenizer.tokens)

    def _sensevoice(self, cfg):
        """The SenseVoice-style model on the filterbank front end, and its CMVN statistics."""
        s = cfg.speech
        self.model = asr.create(
            cfg.model.name,
            **{
                **cfg.model.args,
                "vocab_size": len(self.tokenizer.tokens),
                "input_size": s.num_mel_bins * s.lfr_m,
                "use_prompts": s.prompts,
            },
            dtype=jnp.dtype(cfg.train.compute_dtype),
            remat=cfg.train.remat,
        )
        # Estimated from the training data only where the config gives no file (released
        # weights need no corpus).
        if s.cmvn_file:
            self.cmvn = asr.read_am_mvn(s.cmvn_file)
            if self.cmvn[0].shape != (s.num_mel_bins * s.lfr_m,):
                raise ValueError(
                    f"speech.cmvn_file {s.cmvn_file}: {self.cmvn[0].shape[0]} values, but the features have "
                    f"num_mel_bins x lfr_m = {s.num_mel_bins * s.lfr_m}"
                )
        elif s.assets:
            with np.load(os.path.join(s.assets, "cmvn.npz")) as f:
                self.cmvn = (f["mean"], f["inverse_std"])
        else:
            self.cmvn = self._global_cmvn(self.train_source())
        self.frame_seconds = 0.01 * s.lfr_n
        self.quantizer = bool((self.model.encoder_conf or {}).get("quantizer_layer"))

    # -- data -------------------------------------------------------------------------
    def make_source(self, split):
        return speech.SpeechSource(self.cfg, split)

    def length_buckets(self):
        return speech.duration_buckets(self.cfg.data, self.train_source(), lambda samples: {"audio": samples})

    def example_batch(self, n):
        t = self.train_transform
        batch = {
            "audio": np.zeros((n, t.max_samples), np.float32),
            "audio_length": np.full((n,), t.max_samples, np.int32),
            "labels": np.zeros((n, t.max_labels), np.int32),
            "label_length": np.ones((n,), np.int32),
            "mask": np.ones((n,), np.float32),
        }
        if self.cfg.speech.prompts:
            batch["prompts"] = np.zeros((n, 4), np.int32)
        return batch

    def _global_cmvn(self, source):
        """Mean and inverse standard deviation of the stacked features over the first
        `speech.cmvn_utterances` training utterances (as FunASR's am.mvn)."""
        s = self.cfg.speech
        total, total_sq, count = 0.0, 0.0, 0
        features = jax.jit(lambda a, n: self._features(a, n, None))
        for i in range(min(len(source), s.cmvn_utterances)):
            record = self.train_transform(source[i], None)
            if record["mask"] == 0:
                continue
            feats, length = features(record["audio"][None], record["audio_length"][None])
            f = np.asarray(feats[0, : int(length[0])], np.float64)
            total, total_sq, count = total + f.sum(0), total_sq + (f**2).sum(0), count + len(f)
        if count == 0:
            raise ValueError("no readable training audio to estimate the feature mean and variance from")
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-10))
        return mean.astype(np.float32), (1.0 / std).astype(np.float32)

    def _language_model(self):
        s = self.cfg.speech
        if s.lm_path:
            return read_arpa(s.lm_path)
        if s.lm_order <= 0:
            return None
        transcripts = [r["target"] for r in self.train_source().records]
        if s.lm_words:
            return train_ngram([t.split() for t in transcripts], s.lm_order)
        tokens = self.tokenizer.tokens
        return train_ngram([[tokens[i] for i in self.tokenizer.encode(t)] for t in transcripts], s.lm_order)

    # -- model ------------------------------------------------------------------------
    def _features(self, audio, audio_length, rng):
        """Filterbank (dithered when rng is given) -> LFR; CMVN comes after."""
        s = self.cfg.speech
        dither = s.dither if rng is not None else 0.0
        feats, lengths = asr.fbank(audio, audio_length, num_mel_bins=s.num_mel_bins, dither=dither, key=rng)
        return asr.low_frame_rate(feats, lengths, s.lfr_m, s.lfr_n)

    def forward(self, params, batch, rng, train):
        """Audio batch -> (logits (B, T', V), lengths): the front end, CMVN, SpecAugment in
        training (after CMVN, as FunASR, so a mask is the mean) and the model (the four prompt
        frames first when speech.prompts is on). params hold the quantizer's state too."""
        variables = self._variables(params)
        logits, lengths, _ = self._forward(variables["params"], variables.get("state"), batch, rng, train)
        return logits, lengths

    def _forward(self, params, state, batch, rng, train):
        """forward's (logits, lengths) and what the model moved and sowed in training: the S3
        quantizer's new state and its commitment loss ({} without one)."""
        k_degrade, k_feat, k_mask, k_drop = jax.random.split(rng, 4) if train else (None,) * 4
        s = self.cfg.speech
        audio = batch["audio"]
        if train and s.degrade_prob > 0:
            audio = asr.degrade(k_degrade, audio, batch["audio_length"], s.degrade_prob, s.lowpass_hz, s.noise_snr_db)
        if self.ssl:
            return (*self._ssl_forward(params, audio, batch["audio_length"], k_mask, k_drop, train), {})
        feats, lengths = self._features(audio, batch["audio_length"], k_feat)
        feats = asr.apply_cmvn(feats, lengths, *self.cmvn)
        if train and (s.num_freq_masks or s.num_time_masks):
            feats = asr.spec_augment(
                k_mask,
                feats,
                lengths,
                s.num_freq_masks,
                s.freq_mask_width,
                s.num_time_masks,
                s.time_mask_width,
                s.lfr_m,
            )
        language = textnorm = None
        if s.prompts:
            language, textnorm = self._query_rows(batch["prompts"][:, 0]), self._query_rows(batch["prompts"][:, 3])
            if train:  # as FunASR's SenseVoiceSmall.encode: one utterance in five asks for automatic detection
                auto = jax.random.uniform(jax.random.fold_in(rng, 4), language.shape) < AUTO_LANGUAGE_RATE
                language = jnp.where(auto, asr.LANGUAGE_QUERY["auto"], language)
        variables = {"params": params} if state is None else {"params": params, "state": state}
        moved = ["state", "quantizer"] if train and self.quantizer else []
        rngs = {"dropout": k_drop, "quantizer": jax.random.fold_in(rng, 5)} if train else {}
        out = self.model.apply(
            variables, feats, lengths, language, textnorm, deterministic=not train, rngs=rngs, mutable=moved or False
        )
        (logits, lengths), updates = out if moved else (out, {})
        return logits, lengths, updates

    def _ssl_paddings(self, audio, lengths):
        return (jnp.arange(audio.shape[1])[None] >= lengths[:, None]).astype(jnp.float32)

    def _ssl_forward(self, params, audio, lengths, k_mask, k_drop, train):
        """The SSL recogniser's (logits, frames), in training with spans of frames masked."""
        s, encoder = self.cfg.speech, self.model.encoder
        mask = None
        if train and s.mask_time_prob > 0:
            frames = ssl.output_lengths(lengths, encoder.conv_kernel, encoder.conv_stride)
            t = int(ssl.output_lengths(np.int64(audio.shape[1]), encoder.conv_kernel, encoder.conv_stride))
            mask = ssl.span_mask(k_mask, frames, t, s.mask_time_prob, s.mask_time_length, 2)
        paddings = self._ssl_paddings(audio, lengths)
        rngs = {"dropout": k_drop} if train else {}
        return self.model.apply({"params": params}, audio, paddings, mask, not train, rngs=rngs)

    def inference_prompts(self, language: str = "auto", use_itn: bool = False) -> list:
        """The four prompt token ids of an inference, as FunASR's: <|language|> (auto: the
        model detects it), the emotion and event defaults (the model's queries for them are
        fixed; these are only targets), <|withitn|> or <|woitn|>."""
        index = self.tokenizer.index
        if language != "auto" and (language not in asr.LANGUAGE_QUERY or f"<|{language}|>" not in index):
            known = [k for k in asr.LANGUAGE_QUERY if k == "auto" or f"<|{k}|>" in index]
            raise ValueError(f"unknown language {language!r}; valid: {', '.join(known)}")
        textnorm = "<|withitn|>" if use_itn else "<|woitn|>"
        if textnorm not in index:
            raise ValueError(f"the vocabulary has no {textnorm}")
        emotion, event = (index.get(f"<|{default}|>", 1) for _, default in PROMPT_FIELDS[1:3])
        return [index.get(f"<|{language}|>", 0), emotion, event, index[textnorm]]

    def greedy_labels(self, params, audio, lengths):
        """Greedy CTC labels (B, T') of padded audio, -1 past each row's end; the prompts are
        automatic (language detected, no text normalisation asked)."""
        batch = {"audio": audio, "audio_length": lengths}
        if self.cfg.speech.prompts:
            prompts = self.inference_prompts()
            batch["prompts"] = jnp.tile(jnp.asarray([prompts], jnp.int32), (audio.shape[0], 1))
        logits, frames = self.forward(params, batch, None, train=False)
        _, logits, paddings = self.split_outputs(logits, frames)
        labels, label_paddings = greedy_decode(logits, paddings)
        return jnp.where(label_paddings > 0, -1, labels)

    def encoder_states(self, params, audio, lengths):
        """(states (B, T, D), valid (B, T)): the encoder's output of padded audio, before the
        CTC head, without the prompt rows."""
        if self.ssl:
            encoder = self.model.encoder
            states = encoder.apply({"params": params["encoder"]}, audio, self._ssl_paddings(audio, lengths))
            frames = ssl.output_lengths(lengths, encoder.conv_kernel, encoder.conv_stride)
            return states, jnp.arange(states.shape[1])[None] < frames[:, None]
        feats, frames = self._features(audio, lengths, None)
        feats = asr.apply_cmvn(feats, frames, *self.cmvn)
        _, state = self.model.apply(
            self._variables(params),
            feats,
            frames,
            mutable=["intermediates"],
            capture_intermediates=lambda m, _: isinstance(m, asr.SenseVoiceEncoderSmall),
        )
        states = state["intermediates"]["encoder"]["__call__"][0]
        states = states[:, states.shape[1] - feats.shape[1] :]
        return states, jnp.arange(states.shape[1])[None] < frames[:, None]

    def s3_tokens(self, params, audio, lengths):
        """(codes (B, T'), counts (B,)): the S3 quantizer's tokens of padded audio, one a frame
        (100 / lfr_n Hz), -1 past each row's end; the prompts automatic."""
        feats, frames = self._features(audio, lengths, None)
        feats = asr.apply_cmvn(feats, frames, *self.cmvn)
        return self.model.apply(self._variables(params), feats, frames, method="tokens"), frames

    @staticmethod
    def _variables(params):
        """Flax variables of params that hold the quantizer's state too (inference params)."""
        params = dict(params)
        state = params.pop(QUANTIZER, None)
        return {"params": params} if state is None else {"params": params, "state": state}

    def _query_rows(self, token_ids):
        return jnp.asarray(self._query_table)[token_ids]

    def split_outputs(self, logits, lengths):
        """forward's outputs -> (prompt logits or None, CTC logits, CTC frame paddings)."""
        prompt_logits = None
        if self.cfg.speech.prompts:
            prompt_logits, logits, lengths = (
                logits[:, : asr.NUM_PROMPTS],
                logits[:, asr.NUM_PROMPTS :],
                lengths - asr.NUM_PROMPTS,
            )
        paddings = paddings_from_lengths(lengths, logits.shape[1])
        return prompt_logits, logits, paddings

    def init(self, rng, batch):
        if self.ssl:
            return self.model.init({"params": rng}, batch["audio"][:, :400])
        s = self.cfg.speech
        frames = asr.frontend.num_output_frames(batch["audio"].shape[1], lfr_n=s.lfr_n)
        feats = jnp.zeros((batch["audio"].shape[0], frames, s.num_mel_bins * s.lfr_m))
        variables = self.model.init({"params": rng}, feats, jnp.full((feats.shape[0],), frames))
        state = {QUANTIZER: variables["state"]} if "state" in variables else {}  # VQ's codebook
        return {"params": variables["params"], **({"state": state} if state else {})}

    def convert_weights(self, state_dict):
        """FunASR's SenseVoice; or transformers' *ForCTC, or its encoder alone (HubertModel,
        Wav2Vec2Model: the head keeps its initialisation)."""
        if not self.ssl:
            return asr.from_torch(state_dict, self.model)
        if any(k.startswith("lm_head.") for k in state_dict):
            return ssl.from_torch(state_dict, self.model)
        return {"params": {"encoder": ssl.from_torch(state_dict, self.model.encoder)["params"]}}

    def _label_paddings(self, batch):
        return paddings_from_lengths(batch["label_length"], batch["labels"].shape[1])

    def loss(self, params, batch, rng, step):
        """loss_and_state's loss and metrics without a model state (the loop calls loss_and_state)."""
        loss, (metrics, _) = self.loss_and_state(params, {}, batch, rng, step)
        return loss, metrics

    def loss_and_state(self, params, model_state, batch, rng, step):
        logits, lengths, updates = self._forward(params, model_state.get(QUANTIZER), batch, rng, train=True)
        prompt_logits, logits, paddings = self.split_outputs(logits, lengths)
        mask = batch["mask"]
        n = jnp.maximum(mask.sum(), 1.0)
        # Sum over tokens per utterance, averaged over utterances (FunASR's CTC reduction).
        per_utt = ctc_loss(logits, paddings, batch["labels"], self._label_paddings(batch), zero_infinity=True)
        ctc = (per_utt * mask).sum() / n
        metrics = {"train/ctc": ctc, "train/skipped": (1.0 - mask).sum()}
        total = ctc
        if prompt_logits is not None:
            ce = -jnp.take_along_axis(jax.nn.log_softmax(prompt_logits), batch["prompts"][..., None], axis=-1)[..., 0]
            rich = (ce.sum(1) * mask).sum() / n
            metrics["train/rich_ce"] = rich
            total = total + rich
        if "quantizer" in updates:
            (commitment,) = updates["quantizer"]["encoder"]["quantizer"]["commitment"]
            metrics["train/commitment"] = commitment
            total = total + self.cfg.speech.commitment_weight * commitment
            model_state = {QUANTIZER: updates["state"]}
        return total, (metrics, model_state)

    def eval_outputs(self, params, batch):
        asked = batch
        if self.cfg.speech.prompts:  # asked as a user asks: the language automatic (id 0: the "auto" query)
            asked = {**batch, "prompts": batch["prompts"].at[:, 0].set(0)}
        logits, lengths = self.forward(params, asked, None, train=False)
        prompt_logits, logits, paddings = self.split_outputs(logits, lengths)
        label_paddings = self._label_paddings(batch)
        per_utt = ctc_loss(logits, paddings, batch["labels"], label_paddings, zero_infinity=True)
        greedy, greedy_paddings = greedy_decode(logits, paddings)
        s = self.cfg.speech
        beams = beam_search(
            logits, paddings, s.beam_size, lm=self.lm, lm_weight=s.lm_weight, length_bonus=s.length_bonus
        )
        alignment = forced_align(logits, paddings, batch["labels"], label_paddings)
        usage = {}
        if self.quantizer:  # how often each code is used, for the codebook's perplexity
            codes, _ = self.s3_tokens(params, batch["audio"], batch["audio_length"])
            size = self.model.encoder_conf["codebook_size"]
            usage["code_counts"] = jnp.sum(jax.nn.one_hot(codes, size, dtype=jnp.int32), axis=1)
        return {
            **usage,
            "ctc": per_utt,
            "greedy": jnp.where(greedy_paddings > 0, -1, greedy),
            "beam": jnp.where(jnp.arange(beams.labels.shape[2])[None] >= beams.lengths[:, :1], -1, beams.labels[:, 0]),
            "labels": jnp.where(label_paddings > 0, -1, batch["labels"]),
            "token_starts": alignment.token_starts,
            "token_ends": alignment.token_ends,
            **(
                {"prompt_targets": batch["prompts"], "prompt_predictions": jnp.argmax(prompt_logits, -1)}
                if prompt_logits is not None
                else {}
            ),
        }

    def eval_metrics(self, outputs):
        metrics = {"ctc": float(np.mean(outputs["ctc"]))}
        if "code_counts" in outputs:
            counts = np.sum(outputs["code_counts"], axis=0)
            p = counts[counts > 0] / max(counts.sum(), 1)
            metrics["codes_used"] = float(len(p))
            metrics["code_perplexity"] = float(np.exp(-np.sum(p * np.log(p))))
        references = [self.tokenizer.decode(row[row >= 0]) for row in outputs["labels"]]
        languages = None
        if "prompt_targets" in outputs:  # the language, emotion and event outputs against the manifest's
            targets, predictions = outputs["prompt_targets"], outputs["prompt_predictions"]
            for i, (field, _) in enumerate(PROMPT_FIELDS[:3]):
                metrics[f"{field}_accuracy"] = float(np.mean(targets[:, i] == predictions[:, i]))
            languages = [self.tokenizer.tokens[t].strip("<|>") for t in targets[:, 0]]
        for name in ("greedy", "beam"):
            hypotheses = [self.tokenizer.decode(row[row >= 0]) for row in outputs[name]]
            metrics.update({f"{k}_{name}": v for k, v in error_rates(references, hypotheses, languages).items()})
        return metrics

    def write_artifacts(self, workdir, outputs, step):
        from trainers.pictures import alignment_png

        with open(os.path.join(workdir, "tokens.json"), "w") as f:
            json.dump({"unit": self.tokenizer.unit, "tokens": self.tokenizer.tokens}, f)
        if self.cmvn is not None:
            files.write_npz(os.path.join(workdir, "cmvn.npz"), mean=self.cmvn[0], inverse_std=self.cmvn[1])
        if self.lm_model:
            write_arpa(self.lm_model, os.path.join(workdir, "lm.arpa"))
        record = self.eval_transform(self.eval_source()[0], None)
        feats, length = asr.fbank(
            record["audio"][None], record["audio_length"][None], num_mel_bins=self.cfg.speech.num_mel_bins
        )
        labels = outputs["labels"][0]
        count = int((labels >= 0).sum())
        frame_ms = round(1000 * self.frame_seconds)
        spans = [
            (self.tokenizer.tokens[t], int(a) * frame_ms, int(b) * frame_ms)
            for t, a, b in zip(labels[:count], outputs["token_starts"][0][:count], outputs["token_ends"][0][:count])
        ]
        hypothesis = self.tokenizer.decode(outputs["beam"][0][outputs["beam"][0] >= 0])
        alignment_png(
            os.path.join(workdir, "alignment.png"),
            np.asarray(feats[0, : int(length[0])]),
            spans,
            title=f'step {step}: heard "{hypothesis}"',
            ms_per_frame=10,
        )
        print(f"wrote {os.path.join(workdir, 'alignment.png')}")


class Recognizer:
    """A trained CTC run as a helper of other families: greedy transcripts, and encoder
    states at frame_rate Hz (100 / lfr_n for SenseVoice), of 16 kHz waveforms. The run's vocabulary and statistics are
    its own files (tokens.json, cmvn.npz)."""

    def __init__(self, workdir: str):
        trainer, self.params = load_run(
            workdir, "ctc", "recogniser", speech=lambda cfg: dataclasses.replace(cfg.speech, assets=workdir)
        )
        self.task = trainer.task
        self.frame_rate = 1 / self.task.frame_seconds
        self._labels = jax.jit(self.task.greedy_labels)
        self._states = jax.jit(self.task.encoder_states)
        self._tokens = jax.jit(self.task.s3_tokens)

    def transcribe(self, waveforms) -> list:
        with sharding.first_device():
            labels = np.asarray(self._labels(self.params, *speech.pad_waveforms(waveforms)))
        return [self.task.tokenizer.decode(row[row >= 0]) for row in labels]

    def encoder_states(self, audio, lengths):
        """(states (B, T, D), valid (B, T)) of padded audio (B, samples) with its lengths."""
        with sharding.first_device():
            return self._states(self.params, audio, lengths)

    def s3_tokens(self, audio, lengths):
        """(codes (B, T), counts (B,)): the S3 quantizer's tokens (a recogniser trained with one)."""
        with sharding.first_device():
            return self._tokens(self.params, audio, lengths)


TASK = CTCTask
