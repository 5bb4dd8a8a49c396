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
VALL-E's). The paper's sizes are 12 layers, width 1024,
16 heads, FFN 4096, dropout 0.1, for both models. The paper gives no parameter count;
ours are in jaxmodels.speechlm.VARIANTS' docstring.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

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


class VALLEAR(_VALLE):
    """Audio ids: codes 0..codebook_size-1, EOS = codebook_size, BOS = codebook_size + 1.

    group_size G > 1 is VALL-E 2's grouped code modeling (Chen et al. 2024): each position
    holds G consecutive codes (their embeddings summed, one table per place in the group)
    and predicts the next G (one head per place), so the AR runs at 1/G of the codec's
    frame rate. G = 1 is VALL-E's model.
    """

    group_size: int = 1

    @property
    def eos(self):
        return self.codebook_size

    @property
    def bos(self):
        return self.codebook_size + 1

    @nn.compact
    def __call__(self, audio, audio_positions, audio_valid, text=None, text_valid=None, *, decode=False,
                 deterministic=True):
        """Logits (batch, A * G, codebook_size + 1) of the next first-codebook code at each place.

        audio (batch, A * G) ids, A groups of G codes starting with a group of BOS;
        audio_positions and audio_valid (batch, A) per group; text (batch, T) ids. When
        decoding, the first call carries the text and the audio prefix, later calls only new audio.
        """
        b, g, ids = audio.shape[0], self.group_size, self.codebook_size + 2
        places = audio.reshape(b, -1, g) + ids * jnp.arange(g)  # place i of a group reads rows i*ids..
        x = Embed(g * ids, self.d_model, "audio_embedding")(places).sum(2)
        positions, valid, bidirectional = audio_positions * self.audio_position_scale, audio_valid, 0
        if text is not None:
            t = Embed(self.text_vocab_size, self.d_model, "text_embedding")(text)
            text_positions = jnp.broadcast_to(jnp.arange(text.shape[1]), text.shape)
            x = jnp.concatenate([t, x], axis=1)
            positions = jnp.concatenate([text_positions, positions], axis=1)
            valid = jnp.concatenate([text_valid, audio_valid], axis=1)
            bidirectional = text.shape[1]
        h = Transformer(self.num_layers, self.nhead, self.dim_feedforward, True, self.positions, self.dropout,
                        dtype=self.dtype, remat=self.remat, name="decoder")(
            x, positions, valid, causal=True, bidirectional=bidirectional, decode=decode, deterministic=deterministic)
        h = h[:, h.shape[1] - audio.shape[1] // g:]
        logits = Dense(g * (self.codebook_size + 1), ("embed", "vocab"), use_bias=False, dtype=self.dtype,
                       name="predict")(h)
        logits = logits.reshape(b, -1, self.codebook_size + 1)
        return constrain(logits, ("batch", "length", "vocab")).astype(jnp.float32)

    def example(self, batch: int = 1, text_length: int = 4, audio_length: int = 4):
        """Inputs for init: (audio, positions, valid) and the text keyword arguments."""
        audio = jnp.zeros((batch, audio_length * self.group_size), jnp.int32)
        positions = jnp.zeros((batch, audio_length), jnp.int32)
        text = jnp.zeros((batch, text_length), jnp.int32)
        return (audio, positions, jnp.ones(positions.shape, bool)), dict(
            text=text, text_valid=jnp.ones(text.shape, bool))


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


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k", "top_p"))
def generate_ar(model: VALLEAR, params, text, text_lengths, prompt, prompt_lengths, rng, *, max_new_tokens: int,
                min_new_tokens=0, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """First-codebook codes after the prompt: (codes (batch, max_new_tokens), lengths (batch,)).

    text (batch, T) with text_lengths; prompt (batch, P) first-codebook codes with
    prompt_lengths (a row may have none; with groups, multiples of the group size). One
    prefill, then one cached step per group of codes in a lax.while_loop that stops when
    every row has produced EOS; codes past a row's length are EOS. EOS is not drawn before
    min_new_tokens (an int, or one per row).
    """
    b, t = text.shape
    g, vocab = model.group_size, model.codebook_size + 1
    prompt = jnp.pad(prompt.astype(jnp.int32), ((0, 0), (0, -prompt.shape[1] % g)))
    prefill = prompt.shape[1] // g + 1  # groups: BOS, then the prompt's
    steps = -(-max_new_tokens // g)
    text_valid = lengths_mask(text_lengths, t)
    audio = jnp.concatenate([jnp.full((b, g), model.bos, jnp.int32), prompt], axis=1)
    positions = jnp.broadcast_to(jnp.arange(prefill), (b, prefill))
    prompt_groups = prompt_lengths // g
    audio_valid = positions <= prompt_groups[:, None]
    whole = jnp.zeros((b, prefill + steps), jnp.int32)
    cache = empty_cache(model, jnp.zeros((b, (prefill + steps) * g), jnp.int32), whole, jnp.ones(whole.shape, bool),
                        text=text, text_valid=text_valid)

    def step(cache, tokens, token_positions, valid, text=None):
        logits, variables = model.apply({"params": params, "cache": cache}, tokens, token_positions, valid,
                                        text=text, text_valid=text_valid if text is not None else None,
                                        decode=True, mutable=["cache"])
        return logits.reshape(b, -1, g, vocab), variables["cache"]

    logits, cache = step(cache, audio, positions, audio_valid, text)
    last = logits[jnp.arange(b), prompt_groups]  # (batch, G, vocab): the first group after the prompt

    def cond(state):
        i, _, _, _, done, _, _ = state
        return (i < steps) & ~jnp.all(done)

    def body(state):
        i, cache, last, codes, done, lengths, rng = state
        rng, key = jax.random.split(rng)
        places = i * g + jnp.arange(g)
        early = (places < jnp.broadcast_to(min_new_tokens, (b,))[:, None])[..., None] & (jnp.arange(vocab) == model.eos)
        tokens = sample_logits(key, jnp.where(early, -jnp.inf, last), temperature, top_k, top_p)
        eos = tokens == model.eos
        tokens = jnp.where(done[:, None] | (jnp.cumsum(eos, axis=1) > 0), model.eos, tokens)  # EOS from the first on
        lengths = jnp.where(~done & eos.any(1), i * g + jnp.argmax(eos, axis=1), lengths)
        done = done | eos.any(1)
        codes = jax.lax.dynamic_update_slice(codes, tokens, (0, i * g))
        logits, cache = step(cache, tokens, (prompt_groups + 1 + i)[:, None], jnp.ones((b, 1), bool))
        return i + 1, cache, logits[:, 0], codes, done, lengths, rng

    codes = jnp.full((b, steps * g), model.eos, jnp.int32)
    state = (0, cache, last, codes, jnp.zeros(b, bool), jnp.full(b, max_new_tokens), rng)
    _, _, _, codes, _, lengths, _ = jax.lax.while_loop(cond, body, state)
    return codes[:, :max_new_tokens], jnp.minimum(lengths, max_new_tokens)


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
        positions = jnp.concatenate([jnp.broadcast_to(jnp.arange(text.shape[1]), text.shape),
                                     jnp.broadcast_to(slots * self.audio_position_scale, (b, a))], axis=1)
        valid = jnp.concatenate([text_valid, codes_valid], axis=1)
        stage_embedding = self.param("stage_embedding", nn.with_logical_partitioning(
            nn.initializers.normal(1.0), (None, "embed")), (k - 1, self.d_model), jnp.float32)
        cond = stage_embedding[stage - 1].astype(self.dtype)
        h = Transformer(self.num_layers, self.nhead, self.dim_feedforward, True, self.positions, self.dropout,
                        adaptive=True, dtype=self.dtype, remat=self.remat, name="decoder")(
            x, positions, valid, cond=cond, causal=False, deterministic=deterministic)[:, -a:]
        heads = self.param("predict", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), (None, "embed", "vocab")), (k - 1, self.d_model, self.codebook_size),
            jnp.float32)
        logits = jnp.einsum("bld,bdv->blv", h, heads[stage - 1].astype(self.dtype))
        return constrain(logits, ("batch", "length", "vocab")).astype(jnp.float32)

    def example(self, batch: int = 1, text_length: int = 4, audio_length: int = 8):
        text = jnp.zeros((batch, text_length), jnp.int32)
        codes = jnp.zeros((batch, audio_length, self.num_quantizers), jnp.int32)
        ones = functools.partial(jnp.ones, dtype=bool)
        return (text, ones(text.shape), codes, ones(codes.shape[:2]), jnp.full((batch,), audio_length // 2),
                jnp.ones((batch,), jnp.int32)), {}


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
