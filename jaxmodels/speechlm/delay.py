"""One LM over all K codebooks with MusicGen's delay interleaving (Copet et al. 2023).

Codebook k is shifted right by k frames, so at step s the model emits codebook 0 of
frame s, codebook 1 of frame s-1, ... in one pass: K embeddings summed in, K heads out,
T + K - 1 steps for T frames (audiocraft's DelayedPatternProvider). Slots outside a
codebook's frames hold the special token `codebook_size`, which also starts the sequence;
they are not scored.

Conditioning is a token prefix seen bidirectionally (text, phonemes, or semantic tokens
as AudioLM's acoustic stage is conditioned); audiocraft's MusicGen cross-attends to T5
text features instead, which adds a cross-attention per layer (see VARIANTS).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.nn.layers import constrain
from jaxmodels.speechlm.sampling import sample_logits
from jaxmodels.speechlm.transformer import Embed, Transformer, empty_cache, lengths_mask


def delay_codes(codes, lengths, special: int):
    """(batch, T, K) codes of `lengths` frames -> (batch, T + K - 1, K): codebook k shifted by k,
    `special` elsewhere."""
    b, t, k = codes.shape
    steps = jnp.arange(t + k - 1)[:, None] - jnp.arange(k)[None, :]  # (steps, K): source frame
    inside = (steps >= 0) & (steps < lengths[:, None, None])
    gathered = jnp.take_along_axis(codes, jnp.broadcast_to(jnp.clip(steps, 0, t - 1), (b,) + steps.shape), axis=1)
    return jnp.where(inside, gathered, special)


def undelay_codes(delayed):
    """The inverse of delay_codes: (batch, T + K - 1, K) -> (batch, T, K)."""
    s, k = delayed.shape[1:]
    t = s - k + 1
    frames = jnp.arange(t)[:, None] + jnp.arange(k)[None, :]
    return jnp.take_along_axis(delayed, jnp.broadcast_to(frames, (delayed.shape[0], t, k)), axis=1)


class DelayedLM(nn.Module):
    num_codebooks: int = 4
    codebook_size: int = 2048  # the special token is codebook_size
    cond_vocab_size: int = 256  # prefix tokens (0: unconditional)
    dim: int = 1024
    num_heads: int = 16
    num_layers: int = 24
    hidden_scale: int = 4
    dropout: float = 0.0
    bias: bool = False  # audiocraft's MusicGen: no biases in attention and FFN
    positions: str = "sin"
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, codes, positions, valid, cond=None, cond_valid=None, *, decode=False, deterministic=True):
        """Logits (batch, L, K, codebook_size) of the next step's codes from codes (batch, L, K) in delayed order."""
        x = sum(Embed(self.codebook_size + 1, self.dim, f"emb_{i}")(codes[..., i]) for i in range(self.num_codebooks))
        bidirectional = 0
        if cond is not None:
            c = Embed(self.cond_vocab_size, self.dim, "cond_embedding")(cond)
            x = jnp.concatenate([c, x], axis=1)
            positions = jnp.concatenate([jnp.broadcast_to(jnp.arange(cond.shape[1]), cond.shape), positions], axis=1)
            valid = jnp.concatenate([cond_valid, valid], axis=1)
            bidirectional = cond.shape[1]
        h = Transformer(
            self.num_layers,
            self.num_heads,
            self.hidden_scale * self.dim,
            self.bias,
            self.positions,
            self.dropout,
            dtype=self.dtype,
            remat=self.remat,
            name="transformer",
        )(x, positions, valid, causal=True, bidirectional=bidirectional, decode=decode, deterministic=deterministic)
        h = h[:, h.shape[1] - codes.shape[1] :]
        heads = self.param(
            "linears",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed", "vocab")),
            (self.num_codebooks, self.dim, self.codebook_size),
            jnp.float32,
        )
        logits = jnp.einsum("bld,kdv->blkv", h, heads.astype(self.dtype))
        return constrain(logits, ("batch", "length", None, "vocab")).astype(jnp.float32)

    def example(self, batch: int = 1, cond_length: int = 4, length: int = 4):
        codes = jnp.zeros((batch, length, self.num_codebooks), jnp.int32)
        cond = jnp.zeros((batch, cond_length), jnp.int32)
        return (codes, jnp.zeros(codes.shape[:2], jnp.int32), jnp.ones(codes.shape[:2], bool)), dict(
            cond=cond, cond_valid=jnp.ones(cond.shape, bool)
        )


def delayed_training_inputs(codes, lengths, special: int):
    """(inputs, targets, scored), inputs = [special row, delayed[:-1]]; scored marks the real codes of targets."""
    delayed = delay_codes(codes, lengths, special)
    start = jnp.full_like(delayed[:, :1], special)
    return jnp.concatenate([start, delayed[:, :-1]], axis=1), delayed, delayed != special


@functools.partial(jax.jit, static_argnames=("model", "frames", "temperature", "top_k", "top_p"))
def generate_delayed(
    model: DelayedLM,
    params,
    cond,
    cond_lengths,
    prompt,
    prompt_lengths,
    lengths,
    rng,
    *,
    frames: int,
    temperature: float = 1.0,
    top_k: int = 250,
    top_p: float = 1.0,
):
    """(batch, frames, K) codes: a row's first prompt_lengths frames are its prompt's (batch, P, K),
    then drawn up to its `lengths` (batch,) frames; `special` past them.

    cond (batch, C) prefix tokens with cond_lengths, or None for an unconditional model.
    frames + K - 1 cached steps in one lax.fori_loop; at step s codebook k draws frame
    s - k, or takes the prompt's code where that is a prompt frame. top_k 250 is
    MusicGen's default.
    """
    b, p, k = prompt.shape
    special = model.codebook_size
    steps = frames + k - 1
    cond_valid = None if cond is None else lengths_mask(cond_lengths, cond.shape[1])
    whole = jnp.zeros((b, steps + 1, k), jnp.int32)  # the start row, then one slot per step
    cache = empty_cache(model, whole, whole[..., 0], jnp.ones(whole.shape[:2], bool), cond=cond, cond_valid=cond_valid)
    forced = delay_codes(prompt.astype(jnp.int32), prompt_lengths, special)  # (b, p + k - 1, k)
    forced = jnp.pad(forced, ((0, 0), (0, steps), (0, 0)), constant_values=special)
    frame_of = jnp.arange(steps)[:, None] - jnp.arange(k)[None, :]  # (steps, k)

    start = jnp.full((b, 1, k), special, jnp.int32)
    logits, variables = model.apply(
        {"params": params, "cache": cache},
        start,
        jnp.zeros((b, 1), jnp.int32),
        jnp.ones((b, 1), bool),
        cond,
        cond_valid,
        decode=True,
        mutable=["cache"],
    )

    def body(s, state):
        cache, last, out, rng = state
        rng, key = jax.random.split(rng)
        drawn = sample_logits(key, last, temperature, top_k, top_p)  # (b, k)
        frame = frame_of[s][None, :]
        token = jnp.where(frame < prompt_lengths[:, None], forced[:, s], drawn)
        token = jnp.where((frame < 0) | (frame >= lengths[:, None]), special, token)
        out = out.at[:, s].set(token)
        logits, variables = model.apply(
            {"params": params, "cache": cache},
            token[:, None],
            jnp.full((b, 1), s + 1),
            jnp.ones((b, 1), bool),
            decode=True,
            mutable=["cache"],
        )
        return variables["cache"], logits[:, 0], out, rng

    out = jnp.full((b, steps, k), special, jnp.int32)
    _, _, out, _ = jax.lax.fori_loop(0, steps, body, (variables["cache"], logits[:, 0], out, rng))
    return undelay_codes(out)
