"""CosyVoice's text-to-speech-token LM (cosyvoice/llm/llm.py TransformerLM, CosyVoice-300M):
text tokens and a speaker embedding -> supervised semantic speech tokens (50 Hz, 4096 codes).

Text tokens are embedded and encoded by a causal ConformerEncoder (SiLU) and projected to the
LM's width; the speaker x-vector is unit-normalised and projected. Each row is
[sos, speaker, text, task_id, speech tokens] (ragged rows packed to the left, padding -1.0 as
upstream pads them) through a causal TransformerEncoder (ReLU) and a linear head over the
4096 codes and eos. The loss is the cross entropy of every speech token and eos, averaged
over the batch's tokens (upstream's length-normalised LabelSmoothingLoss without smoothing).

`generate` is upstream's `inference` for a batch: the prompt text goes before the text (one
causal encoding), the prompt's speech tokens after task_id, and tokens are drawn one by one
from the KV cache with repetition-aware sampling (top-p 0.8 within the top 25; a token drawn
again within the last 10 is redrawn from the whole distribution without it), eos held back
for the first 2 tokens per text token and at most 20 per text token drawn.
Without a speaker embedding (upstream's instruct mode) the row has no speaker slot.

`Qwen2LM` is CosyVoice 2's (Qwen2LM over Qwen2-0.5B, `jaxmodels.cosyvoice.qwen2`): the text
embedded by Qwen2's own token table, rows [sos, text, task_id, speech tokens] with no speaker
slot (its x-vector goes to the flow decoder only), a head over 6561 FSQ tokens and three stop
tokens; trained on those unistream rows and, as upstream for streaming text input, on rows
interleaving 5 text and 15 speech tokens (`training_rows`); decoded by the same `generate` (any
stop token ends a row).

`word_alignment` (not upstream's; off in the released configurations) is VALL-E R's monotonic
alignment (Han et al. 2024) over words, as `jaxmodels.speechlm.valle`'s: each position from
task_id on is also told the word of the token it predicts (the mean of that word's encoded text
tokens) and how many of its tokens came before, and predicts whether the next token begins the
next word (`advance`). Decoding moves a pointer through the text's words and ends a row when it
moves past the last, so a word is neither skipped nor repeated and speech does not stop early.

Module names are upstream's, dots as underscores; encoder layers stacked ("layers" axis).
"""

import dataclasses
import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.cosyvoice import qwen2
from jaxmodels.cosyvoice.encoder import ConformerEncoder, TransformerEncoder, layer_path
from jaxmodels.nn import Dense, variants
from jaxmodels.nn.state_dict import assign_state_dict, load_state_dict, stack_layers
from jaxmodels.nn.variants import named_config
from jaxmodels.speechlm.transformer import Embed
from jaxmodels.speechlm.valle import MAX_WORD_PROGRESS, word_progress

IGNORE = -1  # upstream's IGNORE_ID: a target that is not scored


@dataclasses.dataclass(frozen=True)
class Sampling:
    """ras_sampling's settings and the length limits of inference, as upstream's configs set them."""

    top_p: float = 0.8
    top_k: int = 25
    win_size: int = 10
    tau_r: float = 0.1
    min_token_text_ratio: float = 2.0
    max_token_text_ratio: float = 20.0
    # Classifier-free guidance on the text (not upstream's: 1.0 draws as it does): each row also
    # runs without its text and prompt text, tokens drawn from u + w (c - u) of the two logits
    guidance_scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class LMConfig(Sampling):
    """TransformerLM's arguments and its encoders' (upstream's names); defaults CosyVoice-300M's."""

    text_token_size: int = 51866
    speech_token_size: int = 4096
    text_encoder_input_size: int = 512
    text_encoder_output_size: int = 1024
    llm_input_size: int = 1024
    llm_output_size: int = 1024
    spk_embed_dim: int = 192
    text_encoder_heads: int = 16
    text_encoder_linear_units: int = 4096
    text_encoder_blocks: int = 6
    llm_heads: int = 16
    llm_linear_units: int = 4096
    llm_blocks: int = 14
    word_alignment: bool = False  # VALL-E R's alignment over words (not upstream's; see the module's doc)


def ragged_concat(segments, pad):
    """Rows of several (B, L_s, ...) segments, each holding its first lengths_s (B,) entries,
    packed one after another from the left and padded with `pad`: (B, sum L_s, ...), lengths."""
    b = segments[0][0].shape[0]
    total = sum(x.shape[1] for x, _ in segments)
    out = jnp.full((b, total, *segments[0][0].shape[2:]), pad, segments[0][0].dtype)
    start = jnp.zeros((b,), jnp.int32)
    rows = jnp.arange(b)[:, None]
    for x, length in segments:
        slot = jnp.arange(x.shape[1])[None]
        target = jnp.where(slot < length[:, None], start[:, None] + slot, total)  # past the end: dropped
        out = out.at[rows, target].set(x.astype(out.dtype), mode="drop")
        start = start + length
    return out, start


def targets(text, text_len, speech, speech_len, eos: int, speaker: bool = True):
    """(B, L) the token each slot of `TransformerLM.sequence`'s rows predicts: nothing (IGNORE)
    for sos, the speaker and the text, the speech tokens from task_id on, then eos."""
    b = speech.shape[0]
    head = 2 if speaker else 1
    segments = [
        (jnp.full((b, head + text.shape[1]), IGNORE), head + text_len),
        (speech, speech_len),
        (jnp.full((b, 1), eos), jnp.ones((b,), jnp.int32)),
    ]
    out, _ = ragged_concat(segments, IGNORE)
    return out


def scores(logits, target):
    """Per row (B,): (summed cross entropy, scored targets, right argmaxes) of the scored targets."""
    scored = target != IGNORE
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.maximum(target, 0)[..., None], axis=-1)[..., 0]
    right = (jnp.argmax(logits, axis=-1) == target) & scored
    return jnp.sum(nll * scored, 1), jnp.sum(scored, 1), jnp.sum(right, 1)


def loss(logits, target):
    """(cross entropy, accuracy) over the scored targets of the whole batch."""
    nll, count, right = (jnp.sum(v) for v in scores(logits, target))
    count = jnp.maximum(count, 1)
    return nll / count, right / count


class TransformerLM(nn.Module):
    """TransformerLM: `sequence` packs the training rows, `logits` runs the LM over them,
    `step` decodes from the cache (see `generate`)."""

    config: LMConfig
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    def setup(self):
        c = self.config
        self.text_embedding = Embed(c.text_token_size, c.text_encoder_input_size, dtype=self.dtype)
        self.text_encoder = ConformerEncoder(
            c.text_encoder_output_size,
            c.text_encoder_heads,
            c.text_encoder_linear_units,
            c.text_encoder_blocks,
            causal=True,
            dtype=self.dtype,
            remat=self.remat,
        )
        self.text_encoder_affine_layer = Dense(c.llm_input_size, ("mlp", "embed"), dtype=self.dtype)
        self.llm_embedding = Embed(2, c.llm_input_size, dtype=self.dtype)  # sos, task_id
        self.llm = TransformerEncoder(
            c.llm_output_size, c.llm_heads, c.llm_linear_units, c.llm_blocks, dtype=self.dtype, remat=self.remat
        )
        self.llm_decoder = Dense(c.speech_token_size + 1, ("embed", "vocab"), dtype=self.dtype)
        self.speech_embedding = Embed(c.speech_token_size, c.llm_input_size, dtype=self.dtype)
        self.spk_embed_affine_layer = Dense(c.llm_input_size, ("mlp", "embed"), dtype=self.dtype)
        if c.word_alignment:
            self.word_progress_embedding = Embed(MAX_WORD_PROGRESS, c.llm_input_size, dtype=self.dtype)
            self.advance = Dense(1, ("embed", None), dtype=self.dtype)

    def encode(self, text, text_len):
        """(B, T) text tokens -> (B, T, llm_input_size)."""
        valid = jnp.arange(text.shape[1])[None] < text_len[:, None]
        return self.text_encoder_affine_layer(self.text_encoder(self.text_embedding(text), valid))

    def speaker(self, embedding):
        """(B, spk_embed_dim) x-vectors -> (B, 1, llm_input_size), unit-normalised first."""
        norm = jnp.linalg.norm(embedding, axis=-1, keepdims=True)
        return self.spk_embed_affine_layer(embedding / jnp.maximum(norm, 1e-12))[:, None]

    def _special(self, index, batch):
        return jnp.broadcast_to(self.llm_embedding(jnp.array([[index]])), (batch, 1, self.config.llm_input_size))

    def sequence(self, text, text_len, speech, speech_len, embedding, text_words=None, speech_words=None):
        """The LM's input rows [sos, speaker, text, task_id, speech] (B, L, D) and their
        lengths; without an embedding (None) no speaker slot.

        word_alignment: text_words (B, T) the word of each text token (-1: none, as a space),
        speech_words (B, S + 1) the word of the token each position from task_id on predicts
        (-1: none, as on a prompt's tokens; one past the last word where eos is due)."""
        b = text.shape[0]
        one = jnp.ones((b,), jnp.int32)
        segments = [(self._special(0, b), one)]
        if embedding is not None:
            segments.append((self.speaker(embedding), one))
        encoded = self.encode(text, text_len)
        task, tokens = self._special(1, b), self.speech_embedding(speech)
        if self.config.word_alignment:
            said = self.words(self.word_table(encoded, text_words), speech_words, word_progress(speech_words))
            task, tokens = task + said[:, :1], tokens + said[:, 1:]
        segments += [(encoded, text_len), (task, one), (tokens, speech_len)]
        return ragged_concat(segments, -1.0)

    def word_table(self, encoded, text_words):
        """(B, T, D): each word's encoded text tokens averaged (a text holds at most T words)."""
        member = (text_words[:, :, None] == jnp.arange(encoded.shape[1])).astype(encoded.dtype)
        total = jnp.einsum("btw,btd->bwd", member, encoded)
        return total / jnp.maximum(member.sum(1), 1)[..., None]

    def text_word_table(self, text, text_len, text_words):
        return self.word_table(self.encode(text, text_len), text_words)

    def words(self, table, words, progress):
        """(B, N, D) what N positions are told: their word's row of `table` and their progress
        embedding; nothing where the word is -1."""
        word = jnp.take_along_axis(table, jnp.clip(words, 0, table.shape[1] - 1)[..., None], axis=1)
        said = word + self.word_progress_embedding(jnp.clip(progress, 0, MAX_WORD_PROGRESS - 1))
        return said * (words >= 0)[..., None]

    def _heads(self, h):
        logits = self.llm_decoder(h)
        return (logits, self.advance(h)[..., 0].astype(jnp.float32)) if self.config.word_alignment else logits

    def logits(self, x, length):
        """(B, L, speech_token_size + 1) of the causal LM over rows of `length` (full pass); with
        word_alignment also `advance`'s logits (B, L)."""
        valid = jnp.arange(x.shape[1])[None] < length[:, None]
        return self._heads(self.llm(x, valid))

    def embed_speech(self, tokens, table=None, words=None, progress=None):
        """Speech tokens' inputs; with word_alignment, plus what they are told of `words` (see `words`)."""
        x = self.speech_embedding(tokens)
        return x if table is None else x + self.words(table, words, progress)

    def step(self, x, valid, positions):
        """Decoding: (B, L, D) inputs at `positions` (B, L) appended to the cache -> logits
        (and advance's, with word_alignment)."""
        return self._heads(self.llm(x, valid, positions.astype(jnp.int32), decode=True))

    def __call__(self, text, text_len, speech, speech_len, embedding, text_words=None, speech_words=None):
        """Logits (B, 3 + T + S, V + 1) of the training rows (targets() gives their targets); with
        word_alignment (text_words and speech_words as `sequence` takes them) also advance's (B, L)."""
        return self.logits(*self.sequence(text, text_len, speech, speech_len, embedding, text_words, speech_words))


@dataclasses.dataclass(frozen=True)
class Qwen2LMConfig(Sampling):
    """CosyVoice 2's Qwen2LM: the Qwen2 decoder (`llm`; Qwen2-0.5B), 6561 FSQ speech tokens and
    three stop tokens, sampled as CosyVoice-300M's LM."""

    llm: qwen2.Qwen2Config = qwen2.Qwen2Config()
    speech_token_size: int = 6561


CONFIGS = {
    "llm_cosyvoice_300m": LMConfig(),  # 310,718,465 parameters
    "llm_cosyvoice_300m_25hz": LMConfig(text_token_size=60515),
    "llm_cosyvoice2": Qwen2LMConfig(),  # 505,803,812 parameters
}


class Qwen2LM(nn.Module):
    """TransformerLM's interface (`sequence`, `logits`, `step`, `embed_speech`) over Qwen2;
    `embedding` is taken and ignored, as upstream's inference does."""

    config: Qwen2LMConfig
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    def setup(self):
        c = self.config
        width = c.llm.hidden_size
        self.llm_embedding = Embed(2, width, dtype=self.dtype)  # sos, task_id
        self.llm = qwen2.Qwen2Model(c.llm, self.dtype, self.remat)
        self.llm_decoder = Dense(c.speech_token_size + 3, ("embed", "vocab"), dtype=self.dtype)
        self.speech_embedding = Embed(c.speech_token_size + 3, width, dtype=self.dtype)

    def sequence(self, text, text_len, speech, speech_len, embedding=None):
        """The LM's input rows [sos, text, task_id, speech] (B, L, D) and their lengths."""
        b, width = text.shape[0], self.config.llm.hidden_size
        one = jnp.ones((b,), jnp.int32)
        special = lambda i: jnp.broadcast_to(self.llm_embedding(jnp.array([[i]])), (b, 1, width))  # noqa: E731
        segments = [(special(0), one), (self.llm.embed(text), text_len), (special(1), one)]
        segments.append((self.speech_embedding(speech), speech_len))
        return ragged_concat(segments, -1.0)

    def training_rows(self, text, text_len, speech, speech_len, bistream, mix=(5, 15)):
        """Upstream's prepare_lm_input_target: (inputs (B, L, D), lengths, targets (B, L)). A row
        with ``bistream`` interleaves ``mix`` = (a, b): a text tokens, then b speech tokens (the
        last text token predicting the first of them, the last of them the fill token), while
        whole groups remain; then the rest of the text, task_id and the rest of the speech, as a
        unistream row is whole: [sos, text, task_id, speech] -> the speech tokens and eos. Rows
        with at most b / a speech tokens per text token are unistream whatever ``bistream`` says."""
        a, b = mix
        c = self.config
        slots = jnp.arange(1 + text.shape[1] + 1 + speech.shape[1])[None]
        bistream = bistream & (speech_len * a > text_len * b)  # upstream's: more than b / a speech tokens a text one
        groups = jnp.where(bistream, text_len // a, 0)[:, None]
        t_len, s_len = text_len[:, None], speech_len[:, None]
        p = slots - 1
        in_group = (slots >= 1) & (p < groups * (a + b))
        j, q = p // (a + b), p % (a + b)
        u = p - groups * (a + b)  # past the groups: the rest of the text, task_id, the rest of the speech
        rest = t_len - a * groups
        is_text = (in_group & (q < a)) | (~in_group & (slots >= 1) & (u < rest))
        is_task = ~in_group & (u == rest)
        is_speech = (in_group & (q >= a)) | (~in_group & (u > rest) & (u <= rest + s_len - b * groups))
        text_index = jnp.where(in_group, a * j + q, a * groups + u)
        speech_index = jnp.where(in_group, b * j + q - a, b * groups + u - rest - 1)
        gather = lambda table, index: jnp.take_along_axis(table, jnp.clip(index, 0, table.shape[1] - 1), 1)  # noqa: E731
        text_emb = gather(self.llm.embed(text), text_index[..., None])
        speech_emb = gather(self.speech_embedding(speech), speech_index[..., None])
        special = self.llm_embedding(jnp.array([0, 1]))
        x = jnp.where(slots[..., None] == 0, special[0], -1.0)
        x = jnp.where(is_task[..., None], special[1], x)
        x = jnp.where(is_text[..., None], text_emb, jnp.where(is_speech[..., None], speech_emb, x))
        eos, fill = c.speech_token_size, c.speech_token_size + 2
        target_index = jnp.where(in_group, b * j + q - (a - 1), b * groups + u - rest)
        predicts = (in_group & (q >= a - 1) & (q < a + b - 1)) | (
            ~in_group & (u >= rest) & (u < rest + s_len - b * groups)
        )
        target = jnp.where(predicts, gather(speech, target_index), IGNORE)
        target = jnp.where(in_group & (q == a + b - 1), fill, target)
        target = jnp.where(~in_group & (slots >= 1) & (u == rest + s_len - b * groups), eos, target)
        length = text_len + speech_len + 2
        return x.astype(self.dtype), length, jnp.where(slots < length[:, None], target, IGNORE)

    def logits(self, x, length):
        """(B, L, speech_token_size + 3) of the causal LM over rows of `length` (full pass)."""
        valid = jnp.arange(x.shape[1])[None] < length[:, None]
        positions = jnp.broadcast_to(jnp.arange(x.shape[1]), valid.shape)
        return self.llm_decoder(self.llm(x, positions, valid))

    def embed_speech(self, tokens):
        return self.speech_embedding(tokens)

    def step(self, x, valid, positions):
        return self.llm_decoder(self.llm(x, positions.astype(jnp.int32), valid, decode=True))

    def __call__(self, text, text_len, speech, speech_len, embedding=None):
        """Logits (B, 2 + T + S, V + 3) of the training rows (targets(..., speaker=False) gives their targets)."""
        return self.logits(*self.sequence(text, text_len, speech, speech_len, embedding))


def ras_sample(rng, logp, recent, cfg: Sampling):
    """Upstream's ras_sampling for each row of log-probabilities (B, V): a draw from the most
    likely tokens holding top_p of the mass (the one crossing it included, at most top_k);
    if that token is among `recent` (B, win_size; -1 where none) at least win_size * tau_r
    times, a draw from the whole distribution without it."""
    k_top, k_any = jax.random.split(rng)
    probs, ids = jax.lax.top_k(jax.nn.softmax(logp, axis=-1), cfg.top_k)  # ties: the lower id first
    kept = jnp.cumsum(probs, axis=-1) - probs < cfg.top_p
    choice = jax.random.categorical(k_top, jnp.where(kept, jnp.log(probs), -jnp.inf), axis=-1)
    token = jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0]
    repeats = jnp.sum(recent == token[:, None], axis=-1)
    without = jnp.where(jnp.arange(logp.shape[-1])[None] == token[:, None], -jnp.inf, logp)
    other = jax.random.categorical(k_any, without, axis=-1)
    return jnp.where(repeats >= cfg.win_size * cfg.tau_r, other, token).astype(jnp.int32)


class Decoding(NamedTuple):
    """generate's loop state: the KV cache, the last step's logits (B, V + 1), the tokens drawn
    (B, max_new_tokens), their counts, which rows are done, the key, the step; with word
    alignment the last step's advance logits, and each row's word and tokens spent on it (B,)."""

    cache: dict
    logits: jax.Array
    tokens: jax.Array
    count: jax.Array
    done: jax.Array
    rng: jax.Array
    step: jax.Array
    advance: jax.Array
    word: jax.Array
    progress: jax.Array


def _word_count(words, length):
    """(B,) how many words the first `length` tokens of each row hold."""
    valid = jnp.arange(words.shape[1])[None] < length[:, None]
    return jnp.max(jnp.where(valid, words, -1), axis=1, initial=-1) + 1


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def generate(
    model: TransformerLM,
    params,
    rng,
    text,
    text_len,
    prompt_text,
    prompt_text_len,
    prompt_speech,
    prompt_speech_len,
    embedding,
    max_new_tokens: int,
    text_words=None,
    prompt_text_words=None,
):
    """Speech tokens (B, max_new_tokens) and their counts (B,) for each row's text, spoken as
    the continuation of its prompt (text and speech tokens, lengths 0 for none) by the
    speaker of `embedding` (B, spk_embed_dim; None for none): upstream's inference, rows in
    parallel. A row draws at least 2 and at most 20 tokens per text token (the
    max_new_tokens first), eos held back before its minimum; any stop token (the ids from
    speech_token_size on: eos, and Qwen2LM's two others) ends the row.

    With word_alignment, text_words and prompt_text_words (B, T) give the word of each text
    token (-1: none), counted from 0 in each text: eos is never drawn, a row ends when its
    pointer moves past the text's last word (moved after a token when advance's probability is
    over a half).

    With the config's guidance_scale w != 1 (classifier-free guidance on the text, Ho & Salimans
    2022; for speech-token LMs Koel-TTS, Hussain et al. 2025) each row runs twice, as given and
    without its text and prompt text, and tokens are drawn from u + w (c - u) of their logits;
    the LM should have been trained with its text dropped at times (task cosyvoice_llm's
    llm.guidance_dropout)."""
    cfg = model.config
    eos = cfg.speech_token_size
    b = text.shape[0]
    variables = {"params": params}
    guided = cfg.guidance_scale != 1.0
    aligned = getattr(cfg, "word_alignment", False)
    # guided: the rows as given, then the same rows without their text
    twice = (lambda x: None if x is None else jnp.concatenate([x, x])) if guided else (lambda x: x)  # noqa: E731
    both, both_len = ragged_concat([(prompt_text, prompt_text_len), (text, text_len)], 0)
    if guided:
        both_len = jnp.concatenate([both_len, jnp.zeros_like(both_len)])
    words, table = {}, None
    if aligned:
        if text_words is None or prompt_text_words is None:
            raise ValueError("an LM with word_alignment decodes given text_words and prompt_text_words")
        first_word = _word_count(prompt_text_words, prompt_text_len)  # the text's follow the prompt text's
        end_word = first_word + _word_count(text_words, text_len)
        later = jnp.where(text_words >= 0, text_words + first_word[:, None], -1)
        both_words, _ = ragged_concat([(prompt_text_words, prompt_text_len), (later, text_len)], -1)
        table = model.apply(variables, twice(both), both_len, twice(both_words), method="text_word_table")
        # the prompt's tokens are told no word; the position after them predicts the text's first word
        places = jnp.arange(prompt_speech.shape[1] + 1)[None]
        told = jnp.where(places == prompt_speech_len[:, None], first_word[:, None], -1)
        words = dict(text_words=twice(both_words), speech_words=_untold(twice(told), b) if guided else told)
    x, length = model.apply(
        variables,
        twice(both),
        both_len,
        twice(prompt_speech),
        twice(prompt_speech_len),
        twice(embedding),
        method="sequence",
        **words,
    )
    rows, slots = x.shape[0], x.shape[1] + max_new_tokens
    positions = jnp.broadcast_to(jnp.arange(x.shape[1]), (rows, x.shape[1]))
    valid = positions < length[:, None]
    whole = (
        jnp.zeros((rows, slots, x.shape[-1]), x.dtype),
        jnp.ones((rows, slots), bool),
        jnp.zeros((rows, slots), jnp.int32),
    )
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *whole, method="step"))["cache"]
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def guide(out):
        """(logits, advance) of the rows as given: the guided logits, the rows' own advance."""
        logits, advance = out if aligned else (out, jnp.zeros(out.shape[:-1]))
        if guided:
            logits = logits[b:] + cfg.guidance_scale * (logits[:b] - logits[b:])
        return logits, advance[:b]

    out, mutated = model.apply({**variables, "cache": cache}, x, valid, positions, method="step", mutable=["cache"])
    final = length - 1  # each row's last slot (a row without its text ends sooner)
    out = jax.tree.map(lambda v: v[jnp.arange(v.shape[0]), final], out)
    last, last_advance = guide(out)
    min_len = (text_len * cfg.min_token_text_ratio).astype(jnp.int32)
    max_len = jnp.minimum((text_len * cfg.max_token_text_ratio).astype(jnp.int32), max_new_tokens)

    def body(state: Decoding):
        rng, key = jax.random.split(state.rng)
        i = state.step
        logp = jax.nn.log_softmax(state.logits.astype(jnp.float32), axis=-1)
        logp = logp.at[:, eos].set(jnp.where(aligned | (i < min_len), -jnp.inf, logp[:, eos]))
        window = i - cfg.win_size + jnp.arange(cfg.win_size)
        recent = jnp.where(window >= 0, state.tokens[:, jnp.maximum(window, 0)], -1)
        token = ras_sample(key, logp, recent, cfg)
        keep = ~state.done & (token < eos)
        tokens = state.tokens.at[:, i].set(jnp.where(keep, token, 0))
        count = state.count + keep
        done = state.done | ~keep | (count >= max_len)
        word, progress, told = state.word, state.progress, {}
        if aligned:
            # the likelier outcome, not a draw: drawn at each token, a move a few tokens into a word
            # comes often enough to cut words short (the demo's held-out pairs 50-99: WER 0.130 drawn, 0.105)
            moves = state.advance > 0
            word, progress = word + moves, jnp.where(moves, 0, progress + 1)
            done = done | (word >= end_word)  # this token is the last word's last
            said = twice(jnp.where(done, -1, word)[:, None])
            told = dict(table=table, words=_untold(said, b) if guided else said, progress=twice(progress[:, None]))
        embedded = model.apply(variables, twice(jnp.minimum(token, eos - 1)[:, None]), method="embed_speech", **told)
        out, mutated = model.apply(
            {**variables, "cache": state.cache},
            embedded,
            jnp.ones((rows, 1), bool),
            (length + i)[:, None],
            method="step",
            mutable=["cache"],
        )
        logits, advance = guide(out)
        return Decoding(mutated["cache"], logits[:, 0], tokens, count, done, rng, i + 1, advance[:, 0], word, progress)

    def cond(state: Decoding):
        return (state.step < max_new_tokens) & ~jnp.all(state.done)

    tokens = jnp.zeros((b, max_new_tokens), jnp.int32)
    count = jnp.zeros((b,), jnp.int32)
    word = first_word if aligned else count
    done = (max_len <= 0) | (word >= end_word) if aligned else max_len <= 0
    start = Decoding(mutated["cache"], last, tokens, count, done, rng, jnp.int32(0), last_advance, word, count)
    end = jax.lax.while_loop(cond, body, start)
    return end.tokens, end.count


def _untold(words, b: int):
    """Guided decoding's words (2B, N): the rows without their text (from b on) are told none."""
    return words.at[b:].set(-1)


def config(name: str, **overrides) -> LMConfig | Qwen2LMConfig:
    """A named configuration, fields overridden (Qwen2LM's ``llm`` by a dict of Qwen2Config's
    fields); an unknown name or field is an error listing the valid ones."""
    if isinstance(overrides.get("llm"), dict) and isinstance(CONFIGS.get(name), Qwen2LMConfig):
        overrides["llm"] = named_config({"qwen2": CONFIGS[name].llm}, "qwen2", "Qwen2", **overrides["llm"])
    return named_config(CONFIGS, name, "llm", **overrides)


def example_inputs(cfg: LMConfig, batch: int = 1, text: int = 4, speech: int = 8):
    return (
        jnp.zeros((batch, text), jnp.int32),
        jnp.full((batch,), text),
        jnp.zeros((batch, speech), jnp.int32),
        jnp.full((batch,), speech),
        jnp.ones((batch, cfg.spk_embed_dim)),
    )


def init_shapes(cfg: LMConfig):
    return jax.eval_shape(lambda: TransformerLM(cfg).init(jax.random.key(0), *example_inputs(cfg)))["params"]


def param_count(cfg: LMConfig) -> int:
    return variants.param_count(TransformerLM(cfg), *example_inputs(cfg))


_EMBEDDINGS = ("text_embedding", "llm_embedding", "speech_embedding")
_STACKED = (("text_encoder.encoders.", "text_encoder_blocks"), ("llm.encoders.", "llm_blocks"))


def from_torch(state_dict, cfg: LMConfig):
    """{"params": ...} of a TransformerLM from upstream's state_dict (a released llm.pt); the
    encoder layers stacked. A key, layer or shape that does not fit is an error listing them."""
    converted, paths, stacks = {}, {}, {}
    for key, value in state_dict.items():
        value = np.asarray(value)
        for modules, length in _STACKED:
            if key.startswith(modules):
                index, _, rest = key.removeprefix(modules).partition(".")
                path, value = layer_path(rest, value)
                top = modules.split(".")[0]
                stack = stacks.setdefault(f"{modules}*.{rest}", ((top, "encoders", *path), getattr(cfg, length), {}))
                stack[2][int(index)] = value
                break
        else:
            top, _, rest = key.partition(".")
            if top in _EMBEDDINGS:
                path = (top, "embedding")
            elif "." in rest:  # inside an encoder: "text_encoder.embed.out.0.weight"
                inner, value = layer_path(rest, value)
                path = (top, *inner)
            else:
                path, value = layer_path(key, value)
            paths[key], converted[key] = path, value
    for key, (path, length, by_index) in stacks.items():
        converted[key], paths[key] = stack_layers(key, by_index, length), path
    params = assign_state_dict(converted, nn.unbox(init_shapes(cfg)), lambda key, value: (paths[key], value))
    return {"params": params}


def qwen2_init_shapes(cfg: Qwen2LMConfig):
    text, speech = jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 8), jnp.int32)
    model = Qwen2LM(cfg)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), text, jnp.array([4]), speech, jnp.array([8])))
    return shapes["params"]


def qwen2_from_torch(state_dict, cfg: Qwen2LMConfig):
    """{"params": ...} of a Qwen2LM from upstream's state_dict (CosyVoice 2's llm.pt: the Qwen2
    decoder under "llm.model.model.", its tied lm_head left out). A key, layer or shape that does
    not fit is an error listing them."""
    shapes = nn.unbox(qwen2_init_shapes(cfg))
    head = {k: v for k, v in shapes.items() if k != "llm"}

    def key_map(key, value):
        module, leaf = key.rsplit(".", 1)
        if module in ("llm_embedding", "speech_embedding"):
            return (module, "embedding"), value
        return (module, "kernel" if leaf == "weight" else leaf), value.T if leaf == "weight" else value

    ignore = lambda key: key.startswith("llm.")  # noqa: E731
    params = assign_state_dict(state_dict, head, key_map, ignore)
    params["llm"] = qwen2.from_torch(state_dict, cfg.llm, prefix="llm.model.model.")["params"]
    unexpected = [k for k in state_dict if k.startswith("llm.") and not k.startswith("llm.model.model.")]
    unexpected = [k for k in unexpected if k != "llm.model.lm_head.weight"]  # tied to the token table
    if unexpected:
        raise ValueError(f"state_dict does not fit the model:\n  unexpected keys: {', '.join(unexpected)}")
    return {"params": params}


def load(path: str, name: str = "llm_cosyvoice_300m"):
    """(model, variables) of a released llm.pt (or .safetensors) of the named configuration:
    CosyVoice-300M's TransformerLM, or CosyVoice 2's Qwen2LM (llm_cosyvoice2)."""
    cfg = config(name)
    if isinstance(cfg, Qwen2LMConfig):
        return Qwen2LM(cfg), qwen2_from_torch(load_state_dict(path), cfg)
    return TransformerLM(cfg), from_torch(load_state_dict(path), cfg)
