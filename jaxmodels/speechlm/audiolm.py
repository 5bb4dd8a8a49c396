"""AudioLM's three stages (Borsos et al. 2023, "AudioLM: a Language Modeling Approach to Audio
Generation"): decoder-only Transformers over flat token sequences, each stage conditioned on
the one before by a token prefix.

  semantic  no prefix                      -> semantic units (deduplicated): continuation
  coarse    semantic units                 -> codebooks 1..Q' of a residual codec
  fine      codebooks 1..Q'                -> codebooks Q'+1..Q, over windows of a few seconds

A frame of K codebooks is K tokens in a row (the paper's flattening); codebook k's code c is
token k * bins + c, so one table embeds them and the head scores only the codebook whose turn
it is. A sequence is [prefix, SEP, target]; in a batch the prefixes are padded to one width,
and positions count each row's real tokens, so every row continues from its own end.

The paper's stages are each 12 layers, 16 heads, width 1024, FFN 4096, dropout 0.1, with
T5-style relative position biases (here: rotary positions, also relative).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.nn.layers import Dense
from jaxmodels.speechlm.sampling import sample_logits
from jaxmodels.speechlm.transformer import Embed, Transformer, empty_cache, lengths_mask


class StageLM(nn.Module):
    """One AudioLM stage: logits of the next target token at every slot of [prefix, SEP, target]."""

    bins: int  # codes per target codebook (the semantic stage: the k-means units)
    codebooks: int = 1  # target tokens per frame
    prefix_bins: int = 0  # codes per prefix codebook; 0: no prefix (the semantic stage)
    prefix_codebooks: int = 1
    num_layers: int = 12
    num_heads: int = 16
    dim: int = 1024
    ffn_dim: int = 4096
    dropout: float = 0.1
    positions: str = "rope"
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    @property
    def vocab(self) -> int:
        return self.codebooks * self.bins

    @property
    def prefix_vocab(self) -> int:
        return self.prefix_codebooks * self.prefix_bins

    @property
    def sep(self) -> int:
        return self.prefix_vocab + self.vocab

    @nn.compact
    def __call__(self, tokens, positions, valid, *, decode=False, deterministic=True):
        """tokens (B, L) in the joint vocabulary: prefix tokens, then target tokens + prefix_vocab,
        then SEP -> float32 logits (B, L, vocab) over the target tokens."""
        x = Embed(self.sep + 1, self.dim, "embedding")(tokens)
        h = Transformer(
            self.num_layers,
            self.num_heads,
            self.ffn_dim,
            positions=self.positions,
            dropout=self.dropout,
            dtype=self.dtype,
            remat=self.remat,
            name="transformer",
        )(x, positions, valid, causal=True, decode=decode, deterministic=deterministic)
        return Dense(self.vocab, ("embed", "vocab"), use_bias=False, dtype=self.dtype, name="head")(h).astype(
            jnp.float32
        )

    def example(self):
        """Arguments of a call that creates every parameter (for param_count)."""
        tokens = jnp.zeros((1, 4), jnp.int32)
        return (tokens, tokens, jnp.ones((1, 4), bool)), {}


def flatten(codes, bins: int):
    """(B, T, K) codes -> (B, T * K) tokens, frame by frame, codebook k's code c as k * bins + c."""
    b, t, k = codes.shape
    return (codes + bins * jnp.arange(k)).reshape(b, t * k)


def unflatten(tokens, codebooks: int, bins: int):
    """The inverse of flatten: (B, T * K) -> (B, T, K)."""
    b, n = tokens.shape
    return tokens.reshape(b, n // codebooks, codebooks) - bins * jnp.arange(codebooks)


def _sequence(model: StageLM, prefix, prefix_lengths, target, target_lengths):
    """(tokens, positions, valid) of [prefix, SEP, target] rows; prefix (B, P), target (B, T)."""
    b, p = prefix.shape
    t = target.shape[1]
    tokens = jnp.concatenate(
        [prefix, jnp.full((b, 1), model.sep, prefix.dtype), target.astype(prefix.dtype) + model.prefix_vocab], axis=1
    )
    positions = jnp.concatenate(
        [
            jnp.broadcast_to(jnp.arange(p), (b, p)),
            prefix_lengths[:, None] + jnp.arange(t + 1)[None],  # SEP, then the target, after the row's prefix
        ],
        axis=1,
    )
    valid = jnp.concatenate(
        [lengths_mask(prefix_lengths, p), jnp.ones((b, 1), bool), lengths_mask(target_lengths, t)], axis=1
    )
    return tokens.astype(jnp.int32), positions.astype(jnp.int32), valid


def loss(model: StageLM, params, prefix, prefix_lengths, target, target_lengths, rng=None):
    """Teacher-forced cross-entropy of the target tokens (the SEP slot predicts the first), per
    row: (the sum of its tokens' losses, their number, its correct argmax predictions), each (B,)."""
    tokens, positions, valid = _sequence(model, prefix, prefix_lengths, target[:, :-1], target_lengths - 1)
    rngs = {"dropout": rng} if rng is not None else {}
    logits = model.apply({"params": params}, tokens, positions, valid, deterministic=rng is None, rngs=rngs)
    logits = logits[:, prefix.shape[1] :]
    mask = lengths_mask(target_lengths, target.shape[1])
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, target[..., None].astype(jnp.int32), axis=-1)[..., 0]
    correct = jnp.argmax(logits, -1) == target
    return jnp.sum(nll * mask, 1), jnp.sum(mask, 1), jnp.sum(correct * mask, 1)


def generate(
    model: StageLM,
    params,
    prefix,
    prefix_lengths,
    prompt,
    prompt_lengths,
    rng,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
):
    """max_new_tokens target tokens after each row's prompt (B, max_new_tokens), each drawn from
    the codebook whose turn it is (a prompt of n tokens is followed by codebook n mod K). One
    prefill of [prefix, SEP, prompt], then one cached step per token in a lax.scan."""
    b, p = prefix.shape
    total = p + 1 + prompt.shape[1] + max_new_tokens
    cache = empty_cache(
        model, jnp.zeros((b, total), jnp.int32), jnp.zeros((b, total), jnp.int32), jnp.ones((b, total), bool)
    )
    tokens, positions, valid = _sequence(model, prefix, prefix_lengths, prompt, prompt_lengths)
    logits, variables = model.apply(
        {"params": params, "cache": cache}, tokens, positions, valid, decode=True, mutable=["cache"]
    )
    last = jnp.take_along_axis(logits, (p + prompt_lengths)[:, None, None], axis=1)[:, 0]
    codebook_of = jnp.arange(model.vocab) // model.bins

    def step(carry, n):
        cache, logits, rng = carry
        rng, key = jax.random.split(rng)
        turn = (prompt_lengths + n) % model.codebooks
        logits = jnp.where(codebook_of[None] == turn[:, None], logits, -jnp.inf)
        token = sample_logits(key, logits, temperature, top_k, top_p)
        position = prefix_lengths + 1 + prompt_lengths + n
        out, variables = model.apply(
            {"params": params, "cache": cache},
            (token + model.prefix_vocab)[:, None],
            position[:, None],
            jnp.ones((b, 1), bool),
            decode=True,
            mutable=["cache"],
        )
        return (variables["cache"], out[:, 0], rng), token

    _, new = jax.lax.scan(step, (variables["cache"], last, rng), jnp.arange(max_new_tokens))
    return new.T
