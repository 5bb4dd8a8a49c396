"""VALL-E (Wang et al. 2023, "Neural Codec Language Models are Zero-Shot Text to Speech Synthesizers").

Two transformers over a codec's RVQ codes (frames x K codebooks):

- VALLEAR, autoregressive over the first codebook: [text ; BOS, c_1 ... c_T] with the text
  seen bidirectionally and the audio causally; it predicts c_{t+1} (or EOS) at each audio
  position. At inference the text is the prompt's transcript followed by the target
  text, and the audio starts with the prompt's first-codebook codes, so the continuation
  speaks the target text in the prompt's voice.
- VALLENAR, non-autoregressive over codebooks 2..K: [text ; prompt ; target] with full
  attention; the prompt is embedded with all K codebooks, the target with the codebooks
  below the stage k being predicted, and the norms are adaptive on an embedding of k
  (AdaLN). Decoding runs the stages in turn, greedily, as the paper does.

Text and audio each count positions from 0 (sinusoids added per segment, as the common
reimplementation lifeiteng/vall-e does). audio_position_scale multiplies the audio
positions (the AR's count its groups of codes, the NAR's frames): at about the text
tokens per position, speech and the text it says sit at matching positions, so that
attention can find the text being spoken from the positions alone (1.0, the default, is
VALL-E's). VALLEAR's word_alignment goes further (VALL-E R): each position is told its
word. The paper's sizes are 12 layers, width 1024, 16 heads, FFN 4096, dropout 0.1, for
both models. The paper gives no parameter count; ours are in jaxmodels.speechlm.VARIANTS'
docstring.
"""

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.nn.layers import Dense, constrain
from jaxmodels.speechlm.sampling import sample_logits
from jaxmodels.speechlm.transformer import Embed, Transformer, empty_cache, lengths_mask


class _VALLE(nn.Module):
    """The arguments VALL-E's AR and NAR models share (the paper's sizes)."""

    text_vocab_size: int = 512
    codebook_size: int = 1024
    d_model: int = 1024
    nhead: int = 16
    num_layers: int = 12
    dim_feedforward: int = 4096
    dropout: float = 0.1
    positions: str = "sin"
    audio_position_scale: float = 1.0
    dtype: jnp.dtype = jnp.float32
    remat: bool = False


MAX_WORD_TOKENS = 32  # text tokens of a word told apart by place (longer words share the last)
MAX_WORD_PROGRESS = 128  # groups into a word told apart (longer words share the last)


class VALLEAR(_VALLE):
    """Audio ids: codes 0..codebook_size-1, EOS = codebook_size, BOS = codebook_size + 1.

    group_size G > 1 is VALL-E 2's grouped code modeling (Chen et al. 2024): each position
    holds G consecutive codes (their embeddings summed, one table per place in the group)
    and predicts the next G (one head per place), so the AR runs at 1/G of the codec's
    frame rate. G = 1 is VALL-E's model.

    word_alignment is VALL-E R's monotonic alignment (Han et al. 2024), over words instead
    of phonemes: each audio position is told the word of the group it predicts (an
    embedding of that word's text tokens, each weighted by its place in the word) and how
    many groups of the word came before it, and predicts whether the next group starts the
    next word (`advance`). Decoding moves a pointer through the target's words, one
    word at a time, and ends when it moves past the last: the model cannot skip or repeat
    a word, nor stop early. Positions with word -1 (BOS and the acoustic prompt, whose
    alignment inference does not know) are told nothing.
    """

    group_size: int = 1
    word_alignment: bool = False

    @property
    def eos(self):
        return self.codebook_size

    @property
    def bos(self):
        return self.codebook_size + 1

    @nn.compact
    def __call__(
        self,
        audio,
        audio_positions,
        audio_valid,
        text=None,
        text_valid=None,
        text_words=None,
        audio_words=None,
        word_progress=None,
        *,
        decode=False,
        deterministic=True,
    ):
        """Logits (batch, A * G, codebook_size + 1) of the next first-codebook code at each place;
        with word_alignment, also the logits (batch, A) of `advance` at each position.

        audio (batch, A * G) ids, A groups of G codes starting with a group of BOS;
        audio_positions and audio_valid (batch, A) per group; text (batch, T) ids. When
        decoding, the first call carries the text and the audio prefix, later calls only new audio.
        word_alignment: text_words (batch, T) the word of each text token (-1: none, as the
        space between words) with the text; audio_words and word_progress (batch, A) the word
        (index into the text's words, -1: none) of the group each position predicts and how
        many of its groups came before (`word_progress`).
        """
        b, g, ids = audio.shape[0], self.group_size, self.codebook_size + 2
        places = audio.reshape(b, -1, g) + ids * jnp.arange(g)  # place i of a group reads rows i*ids..
        x = Embed(g * ids, self.d_model, "audio_embedding")(places).sum(2)
        positions, valid, bidirectional = audio_positions * self.audio_position_scale, audio_valid, 0
        t = Embed(self.text_vocab_size, self.d_model, "text_embedding")(text) if text is not None else None
        if self.word_alignment:
            x = x + self._words(t, text_words, audio_words, word_progress, decode)
        if text is not None:
            text_positions = jnp.broadcast_to(jnp.arange(text.shape[1]), text.shape)
            x = jnp.concatenate([t, x], axis=1)
            positions = jnp.concatenate([text_positions, positions], axis=1)
            valid = jnp.concatenate([text_valid, audio_valid], axis=1)
            bidirectional = text.shape[1]
        h = Transformer(
            self.num_layers,
            self.nhead,
            self.dim_feedforward,
            True,
            self.positions,
            self.dropout,
            dtype=self.dtype,
            remat=self.remat,
            name="decoder",
        )(x, positions, valid, causal=True, bidirectional=bidirectional, decode=decode, deterministic=deterministic)
        h = h[:, h.shape[1] - audio.shape[1] // g :]
        logits = Dense(
            g * (self.codebook_size + 1), ("embed", "vocab"), use_bias=False, dtype=self.dtype, name="predict"
        )(h)
        logits = logits.reshape(b, -1, self.codebook_size + 1)
        logits = constrain(logits, ("batch", "length", "vocab")).astype(jnp.float32)
        if not self.word_alignment:
            return logits
        advance = Dense(1, ("embed", None), dtype=self.dtype, name="advance")(h)[..., 0]
        return logits, advance.astype(jnp.float32)

    def _words(self, text_embedded, text_words, audio_words, word_progress, decode):
        """(batch, A, d_model): each position's word (its tokens' embeddings, each scaled by a
        vector for its place in the word, summed) plus its progress embedding; 0 at word -1.
        Decoding keeps the table of the text's words in the cache for the steps after the first."""
        d = self.d_model
        if text_embedded is not None:
            t = text_embedded.shape[1]
            member = text_words[:, :, None] == jnp.arange(t)  # (batch, token, word); a text holds <= t words
            first = jnp.argmax(member, axis=1)  # each word's first token
            place = jnp.arange(t) - jnp.take_along_axis(first, jnp.maximum(text_words, 0), axis=1)
            place_scale = self.param(
                "word_place_scale",
                nn.with_logical_partitioning(nn.initializers.ones, (None, "embed")),
                (MAX_WORD_TOKENS, d),
                jnp.float32,
            )
            tokens = text_embedded * place_scale[jnp.clip(place, 0, MAX_WORD_TOKENS - 1)].astype(self.dtype)
            table = jnp.einsum("btw,btd->bwd", member.astype(tokens.dtype), tokens)
        if decode:
            cached = self.variable("cache", "word_table", lambda: jnp.zeros(table.shape, self.dtype))
            if text_embedded is not None:
                cached.value = table.astype(self.dtype)
            table = cached.value
        word = jnp.take_along_axis(table, jnp.maximum(audio_words, 0)[..., None], axis=1)
        progress = Embed(MAX_WORD_PROGRESS, d, "word_progress_embedding")(
            jnp.clip(word_progress, 0, MAX_WORD_PROGRESS - 1)
        )
        return (word + progress) * (audio_words >= 0)[..., None]

    def example(self, batch: int = 1, text_length: int = 4, audio_length: int = 4):
        """Inputs for init: (audio, positions, valid) and the text keyword arguments."""
        audio = jnp.zeros((batch, audio_length * self.group_size), jnp.int32)
        positions = jnp.zeros((batch, audio_length), jnp.int32)
        text = jnp.zeros((batch, text_length), jnp.int32)
        words = (
            dict(
                text_words=jnp.zeros(text.shape, jnp.int32),
                audio_words=jnp.zeros(positions.shape, jnp.int32),
                word_progress=positions,
            )
            if self.word_alignment
            else {}
        )
        return (audio, positions, jnp.ones(positions.shape, bool)), dict(
            text=text, text_valid=jnp.ones(text.shape, bool), **words
        )


def ar_training_inputs(codes, lengths, bos: int, eos: int, group_size: int = 1):
    """First-codebook codes (batch, T), lengths -> (inputs [BOS x G, c...], targets [c..., EOS], valid),
    each (batch, T + G); T a multiple of the group size G."""
    b, t = codes.shape
    if t % group_size:
        raise ValueError(f"{t} frames do not make groups of {group_size}")
    inputs = jnp.concatenate([jnp.full((b, group_size), bos, codes.dtype), codes], axis=1)
    slots = jnp.arange(t + group_size)[None, :]
    targets = jnp.concatenate([codes, jnp.zeros((b, group_size), codes.dtype)], axis=1)
    targets = jnp.where(slots == lengths[:, None], eos, targets)
    return inputs, targets, slots <= lengths[:, None]


def word_progress(audio_words):
    """(batch, A): how many positions before each one (in a row) hold the same word."""
    slots = jnp.arange(audio_words.shape[1])
    change = jnp.concatenate([jnp.ones_like(audio_words[:, :1], bool), audio_words[:, 1:] != audio_words[:, :-1]], 1)
    return slots - jax.lax.cummax(jnp.where(change, slots, 0), axis=1)


def text_words(ids):
    """The word of each text token: runs of tokens between spaces count 0, 1, ...; -1 at spaces."""
    space = np.asarray(ids) == ord(" ")
    starts = ~space & np.concatenate([[True], space[:-1]])
    return np.where(space, -1, np.cumsum(starts) - 1).astype(np.int32)


def advance_targets(audio_words, groups):
    """(targets, scored) of VALLEAR's `advance` at each position (batch, A + 1) of
    ar_training_inputs: whether the next position's word is a later one. audio_words
    (batch, A + 1): -1 where not aligned, and one past the last word at the position after
    the last group (where EOS is due); groups (batch,): each row's groups of codes."""
    following = jnp.concatenate([audio_words[:, 1:], audio_words[:, -1:]], axis=1)
    scored = (audio_words >= 0) & (jnp.arange(audio_words.shape[1])[None] < groups[:, None])
    return (following > audio_words).astype(jnp.float32), scored


@flax.struct.dataclass
class _ARDecoding:
    """generate_ar's loop state, one step per group of codes."""

    step: jax.Array  # groups drawn so far
    cache: Any  # the transformer's KV cache
    logits: jax.Array  # (B, G, vocab) of the next group
    advance: jax.Array  # (B,) the word pointer's logit of moving on (word alignment)
    codes: jax.Array  # (B, steps * G) drawn, EOS beyond
    done: jax.Array  # (B,) rows that have ended
    lengths: jax.Array  # (B,) codes of each ended row
    word: jax.Array  # (B,) the word each row is saying (word alignment)
    progress: jax.Array  # (B,) groups spent on that word so far
    rng: jax.Array


@functools.partial(
    jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k", "top_p", "guidance_scale")
)
def generate_ar(
    model: VALLEAR,
    params,
    text,
    text_lengths,
    prompt,
    prompt_lengths,
    rng,
    *,
    max_new_tokens: int,
    min_new_tokens=0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    guidance_scale: float = 1.0,
    text_words=None,
    first_word=None,
    num_words=None,
):
    """First-codebook codes after the prompt: (codes (batch, max_new_tokens), lengths (batch,)).

    text (batch, T) with text_lengths; prompt (batch, P) first-codebook codes with
    prompt_lengths (a row may have none; with groups, multiples of the group size). One
    prefill, then one cached step per group of codes in a lax.while_loop that stops when
    every row has produced EOS; codes past a row's length are EOS. EOS is not drawn before
    min_new_tokens (an int, or one per row).

    guidance_scale w != 1 is classifier-free guidance on the text (Ho & Salimans 2022; for
    codec LMs, Koel-TTS, Hussain et al. 2025): each row runs twice, with its text and with
    none (no text token valid, no word told), and codes are drawn from u + w (c - u) of
    their logits. The model should have been trained with its text dropped at times
    (tts.guidance_dropout); w = 1 is plain sampling.

    With word_alignment: text_words (batch, T) as the model takes them, and per row the
    target's words first_word .. num_words - 1 (the prompt's transcript holds the words
    before). EOS is never drawn: each step draws `advance` (sampled at the temperature;
    at 0 where its probability exceeds 1/2) and a row ends when it moves past its last word.
    """
    b, t = text.shape
    g, vocab, aligned = model.group_size, model.codebook_size + 1, model.word_alignment
    prompt = jnp.pad(prompt.astype(jnp.int32), ((0, 0), (0, -prompt.shape[1] % g)))
    prefill = prompt.shape[1] // g + 1  # groups: BOS, then the prompt's
    steps = -(-max_new_tokens // g)
    text_valid = lengths_mask(text_lengths, t)
    audio = jnp.concatenate([jnp.full((b, g), model.bos, jnp.int32), prompt], axis=1)
    positions = jnp.broadcast_to(jnp.arange(prefill), (b, prefill))
    prompt_groups = prompt_lengths // g
    audio_valid = positions <= prompt_groups[:, None]
    whole = jnp.zeros((b, prefill + steps), jnp.int32)
    words = whole_words = {}
    if aligned:  # the prompt's positions have no word; the one after it predicts the first target word's group
        words = dict(
            text_words=text_words,
            audio_words=jnp.where(positions == prompt_groups[:, None], first_word[:, None], -1),
            word_progress=jnp.zeros_like(positions),
        )
        whole_words = dict(text_words=text_words, audio_words=whole, word_progress=whole)
    guided = guidance_scale != 1.0
    # guided: the model runs the rows with their text, then the same rows without
    twice = (lambda x: jnp.concatenate([x, x])) if guided else (lambda x: x)
    if guided:
        text_valid = jnp.concatenate([text_valid, jnp.zeros_like(text_valid)])
    cache = empty_cache(
        model,
        twice(jnp.zeros((b, (prefill + steps) * g), jnp.int32)),
        twice(whole),
        twice(jnp.ones(whole.shape, bool)),
        text=twice(text),
        text_valid=text_valid,
        **{k: twice(v) for k, v in whole_words.items()},
    )

    def step(cache, tokens, token_positions, valid, text=None, **words):
        words = {k: twice(v) for k, v in words.items()}
        if guided and "audio_words" in words:  # the text-free rows are told no word
            words["audio_words"] = words["audio_words"].at[b:].set(-1)
        out, variables = model.apply(
            {"params": params, "cache": cache},
            twice(tokens),
            twice(token_positions),
            twice(valid),
            text=None if text is None else twice(text),
            text_valid=text_valid if text is not None else None,
            decode=True,
            mutable=["cache"],
            **words,
        )
        logits, advance = out if aligned else (out, jnp.zeros(out.shape[:2]))
        if guided:
            unconditional = logits[b:]
            logits, advance = unconditional + guidance_scale * (logits[:b] - unconditional), advance[:b]
        return logits.reshape(b, -1, g, vocab), advance, variables["cache"]

    logits, advance, cache = step(cache, audio, positions, audio_valid, text, **words)
    rows = jnp.arange(b)
    last, last_advance = logits[rows, prompt_groups], advance[rows, prompt_groups]  # the first group after the prompt

    def cond(state):
        return (state.step < steps) & ~jnp.all(state.done)

    def body(state):
        i, done, word, progress = state.step, state.done, state.word, state.progress
        if aligned:
            rng, key, key_advance = jax.random.split(state.rng, 3)
        else:  # no pointer to move: one draw per step
            rng, key = jax.random.split(state.rng)
        places = i * g + jnp.arange(g)
        early = aligned | (places < jnp.broadcast_to(min_new_tokens, (b,))[:, None])
        tokens = sample_logits(
            key,
            jnp.where(early[..., None] & (jnp.arange(vocab) == model.eos), -jnp.inf, state.logits),
            temperature,
            top_k,
            top_p,
        )
        eos = tokens == model.eos
        tokens = jnp.where(done[:, None] | (jnp.cumsum(eos, axis=1) > 0), model.eos, tokens)  # EOS from the first on
        if aligned:
            moves = (
                jax.random.bernoulli(key_advance, jax.nn.sigmoid(state.advance / temperature))
                if temperature > 0
                else state.advance > 0
            )
            word, progress = word + moves, jnp.where(moves, 0, progress + 1)
            ended = ~done & (word >= num_words)  # this group is the row's last
            lengths = jnp.where(ended, (i + 1) * g, state.lengths)
        else:
            ended = ~done & eos.any(1)
            lengths = jnp.where(ended, i * g + jnp.argmax(eos, axis=1), state.lengths)
        done = done | ended
        codes = jax.lax.dynamic_update_slice_in_dim(state.codes, tokens.astype(state.codes.dtype), i * g, axis=1)
        words = (
            dict(audio_words=jnp.where(done, -1, word)[:, None], word_progress=progress[:, None]) if aligned else {}
        )
        positions = (prompt_groups + 1 + i)[:, None]
        logits, advance, cache = step(state.cache, tokens, positions, jnp.ones((b, 1), bool), **words)
        return _ARDecoding(
            step=i + 1,
            cache=cache,
            logits=logits[:, 0],
            advance=advance[:, 0],
            codes=codes,
            done=done,
            lengths=lengths,
            word=word,
            progress=progress,
            rng=rng,
        )

    state = _ARDecoding(
        step=jnp.zeros((), jnp.int32),
        cache=cache,
        logits=last,
        advance=last_advance,
        codes=jnp.full((b, steps * g), model.eos, jnp.int32),
        done=jnp.zeros(b, bool),
        lengths=jnp.full(b, max_new_tokens),
        word=first_word if aligned else jnp.zeros(b, jnp.int32),
        progress=jnp.zeros(b, jnp.int32),
        rng=rng,
    )
    state = jax.lax.while_loop(cond, body, state)
    return state.codes[:, :max_new_tokens], jnp.minimum(state.lengths, max_new_tokens)


class VALLENAR(_VALLE):
    num_quantizers: int = 8

    @nn.compact
    def __call__(self, text, text_valid, codes, codes_valid, prompt_lengths, stage, *, deterministic=True):
        """Logits (batch, A, codebook_size) of codebook `stage` (batch,) in 1..K-1 (0-based) at each frame.

        codes (batch, A, K): each row's acoustic prompt (its first prompt_lengths frames, all K
        codebooks read) and then its target, of which only the codebooks below the row's
        stage are read; only the target's logits mean anything. Prompt and target in one
        sequence, positions counting on from the prompt into the target, as the paper's
        [prompt ; target] concatenation (no padding between them).
        """
        k = self.num_quantizers
        tables = [Embed(self.codebook_size, self.d_model, f"audio_embeddings_{i}") for i in range(k)]
        b, a = codes.shape[:2]
        slots = jnp.arange(a)[None, :]
        upto = jnp.where(slots < prompt_lengths[:, None], k, stage[:, None])  # codebooks read at each frame
        audio = sum(tables[i](codes[..., i]) * (i < upto)[..., None] for i in range(k))
        x = jnp.concatenate([Embed(self.text_vocab_size, self.d_model, "text_embedding")(text), audio], axis=1)
        positions = jnp.concatenate(
            [
                jnp.broadcast_to(jnp.arange(text.shape[1]), text.shape),
                jnp.broadcast_to(slots * self.audio_position_scale, (b, a)),
            ],
            axis=1,
        )
        valid = jnp.concatenate([text_valid, codes_valid], axis=1)
        stage_embedding = self.param(
            "stage_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, "embed")),
            (k - 1, self.d_model),
            jnp.float32,
        )
        cond = stage_embedding[stage - 1].astype(self.dtype)
        h = Transformer(
            self.num_layers,
            self.nhead,
            self.dim_feedforward,
            True,
            self.positions,
            self.dropout,
            adaptive=True,
            dtype=self.dtype,
            remat=self.remat,
            name="decoder",
        )(x, positions, valid, cond=cond, causal=False, deterministic=deterministic)[:, -a:]
        heads = self.param(
            "predict",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed", "vocab")),
            (k - 1, self.d_model, self.codebook_size),
            jnp.float32,
        )
        logits = jnp.einsum("bld,bdv->blv", h, heads[stage - 1].astype(self.dtype))
        return constrain(logits, ("batch", "length", "vocab")).astype(jnp.float32)

    def example(self, batch: int = 1, text_length: int = 4, audio_length: int = 8):
        text = jnp.zeros((batch, text_length), jnp.int32)
        codes = jnp.zeros((batch, audio_length, self.num_quantizers), jnp.int32)
        ones = functools.partial(jnp.ones, dtype=bool)
        return (
            text,
            ones(text.shape),
            codes,
            ones(codes.shape[:2]),
            jnp.full((batch,), audio_length // 2),
            jnp.ones((batch,), jnp.int32),
        ), {}


@functools.partial(jax.jit, static_argnames=("model",))
def generate_nar(model: VALLENAR, params, text, text_lengths, prompt, prompt_lengths, first, lengths):
    """All K codebooks (batch, A, K) of the target from its first (batch, A): stage by stage, argmax."""
    b, a = first.shape
    p = prompt.shape[1]
    text_valid = lengths_mask(text_lengths, text.shape[1])
    # Each row's target right after its prompt: [prompt ; target] without the padding between
    # (a short prompt's padding is overwritten by the target, or above the stage and unread).
    codes = jnp.concatenate([prompt, jnp.zeros((b, a, model.num_quantizers), jnp.int32)], axis=1)
    target_slots = prompt_lengths[:, None] + jnp.arange(a)[None, :]
    rows = jnp.arange(b)[:, None]
    codes = codes.at[rows, target_slots, 0].set(first)
    valid = lengths_mask(prompt_lengths + lengths, p + a)
    target_valid = lengths_mask(lengths, a)

    def stage(k, codes):
        logits = model.apply({"params": params}, text, text_valid, codes, valid, prompt_lengths, jnp.full(b, k))
        predicted = jnp.argmax(jnp.take_along_axis(logits, target_slots[..., None], axis=1), -1)
        return codes.at[rows, target_slots, k].set(jnp.where(target_valid, predicted, 0))

    codes = jax.lax.fori_loop(1, model.num_quantizers, stage, codes)
    return jnp.take_along_axis(codes, target_slots[..., None], axis=1)
