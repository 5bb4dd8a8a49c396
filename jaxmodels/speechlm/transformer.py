"""The decoder-only transformer under every token LM here, with a KV cache for decoding.

Pre-norm blocks (LayerNorm, or adaptive LayerNorm conditioned on a vector as VALL-E's
NAR stage), multi-head attention with a fused qkv projection (heads split by tensor
parallelism), a GELU MLP. Positions are given per token, so a model may restart them
per segment (text, then audio) and ragged batches continue each row's own count:
"sin" adds Vaswani's sinusoids to the input, "rope" rotates queries and keys.

Masks: `valid` (batch, length) marks real tokens; with `causal`, token i sees the
valid tokens j <= i, and the first `bidirectional` slots (a text prefix) also see each
other (a prefix LM); without, every valid token sees every valid token.

Decoding (`decode=True`): the first call on a model with an empty cache creates it
(`init_cache`, from an input as long as the whole sequence will be); every later call
appends its tokens' keys and values at the cache's index and attends over the cache.
A prefill of many tokens and steps of one token give the logits of the full forward pass.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.nn.attention import Projection, dot_product_attention
from jaxmodels.nn.layers import Dense, LayerNorm, constrain, gelu


def sinusoidal(positions, dim: int, max_period: float = 10000.0):
    """(..., dim) float32: [sin(p f), cos(p f)] with f = max_period^(-k/(dim/2)) (Vaswani et al.)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = positions.astype(jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def rope(x, positions, max_period: float = 10000.0):
    """Rotary embedding of (batch, length, heads, head_dim) at (batch, length) positions (rotate-half form)."""
    half = x.shape[-1] // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angle = positions.astype(jnp.float32)[:, :, None, None] * freqs
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def attention_mask(q_slots, k_slots, k_valid, causal: bool, bidirectional):
    """(batch, 1, q, k) bool: which keys each query sees (see the module docstring)."""
    allowed = k_valid[:, None, None, :]
    if causal:
        sees = k_slots[None, :] <= q_slots[:, None]
        prefix = (q_slots[:, None] < bidirectional) & (k_slots[None, :] < bidirectional)
        allowed = allowed & (sees | prefix)[None, None]
    return allowed


def Embed(num: int, dim: int, name: str | None = None, dtype=None):
    """A token table (num, dim), N(0, 1) as torch's nn.Embedding, rows over "vocab"; no name
    in a setup (the attribute names it)."""
    return nn.Embed(
        num,
        dim,
        dtype=dtype,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
        name=name,
    )


def lengths_mask(lengths, size: int):
    return jnp.arange(size)[None, :] < lengths[:, None]


def empty_cache(model, *args, **kwargs):
    """A zeroed KV cache for `model`, sized by the inputs of a call spanning the whole sequence."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, decode=True, **kwargs))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


def kv_cache(module: nn.Module, k, v, valid):
    """Decoding's cache in ``module`` ("cache": key, value, valid, index): the new keys, values and
    validity (B, L, ...) appended at the index, and (keys, values, valid, the new tokens' slots)
    over the whole cache (slots past the index: not valid). The first call, init's, creates it."""
    cached_k = module.variable("cache", "key", jnp.zeros, k.shape, k.dtype)
    cached_v = module.variable("cache", "value", jnp.zeros, v.shape, v.dtype)
    cached_valid = module.variable("cache", "valid", jnp.zeros, valid.shape, bool)
    index = module.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    slots = jnp.arange(k.shape[1])
    if module.is_initializing():
        return k, v, valid, slots
    i = index.value
    # _in_dim: the other start indices take i's dtype (int32, also under x64).
    update = functools.partial(jax.lax.dynamic_update_slice_in_dim, start_index=i, axis=1)
    cached_k.value = update(cached_k.value, k.astype(cached_k.value.dtype))
    cached_v.value = update(cached_v.value, v.astype(cached_v.value.dtype))
    cached_valid.value = update(cached_valid.value, valid)
    index.value = i + k.shape[1]
    return cached_k.value, cached_v.value, cached_valid.value, i + slots


class SelfAttention(nn.Module):
    num_heads: int
    use_bias: bool = True
    positions: str = "sin"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, positions, valid, causal, bidirectional, decode):
        b, length, dim = x.shape
        if dim % self.num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads={self.num_heads}")
        h, hd = self.num_heads, dim // self.num_heads
        qkv = Projection(
            "bld,dkhe->blkhe",
            (dim, 3, h, hd),
            ("embed", None, "heads", "kv"),
            1,
            self.use_bias,
            self.dtype,
            name="qkv",
        )(x)
        q, k, v = (constrain(qkv[:, :, i], ("batch", "length", "heads", "kv")) for i in range(3))
        if self.positions == "rope":
            q, k = rope(q, positions), rope(k, positions)
        q_slots = jnp.arange(length)
        if decode:
            k, v, valid, q_slots = kv_cache(self, k, v, valid)
        mask = attention_mask(q_slots, jnp.arange(k.shape[1]), valid, causal, bidirectional)
        out = dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask)
        return Projection(
            "blhe,hed->bld", (h, hd, dim), ("heads", "kv", "embed"), 2, self.use_bias, self.dtype, name="out"
        )(out)


class Norm(nn.Module):
    """LayerNorm; with a conditioning vector, adaptive: (1 + scale(c)) * LN(x) + shift(c), the
    projection zero-initialised so that it starts as a plain LayerNorm (VALL-E's AdaLN)."""

    adaptive: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, cond=None):
        y = LayerNorm(1e-5, dtype=self.dtype, name="norm")(x)
        if not self.adaptive:
            return y
        dim = x.shape[-1]
        scale_shift = Dense(
            2 * dim, ("embed", "mlp"), dtype=self.dtype, kernel_init=nn.initializers.zeros, name="modulation"
        )(cond)
        scale, shift = jnp.split(scale_shift[:, None, :], 2, axis=-1)
        return y * (1 + scale) + shift


class Block(nn.Module):
    num_heads: int
    ffn_dim: int
    use_bias: bool = True
    positions: str = "sin"
    dropout: float = 0.0
    adaptive: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, cond, positions, valid, bidirectional, causal, decode, deterministic):
        dim = x.shape[-1]
        drop = nn.Dropout(self.dropout, deterministic=deterministic)
        h = Norm(self.adaptive, self.dtype, name="norm1")(x, cond)
        h = SelfAttention(self.num_heads, self.use_bias, self.positions, self.dtype, name="attn")(
            h, positions, valid, causal, bidirectional, decode
        )
        x = x + drop(h)
        h = Norm(self.adaptive, self.dtype, name="norm2")(x, cond)
        h = Dense(self.ffn_dim, ("embed", "mlp"), self.use_bias, self.dtype, name="fc1")(h)
        h = constrain(gelu(h), ("batch", "length", "mlp"))
        h = Dense(dim, ("mlp", "embed"), self.use_bias, self.dtype, name="fc2")(drop(h))
        return constrain(x + drop(h), ("batch", "length", "act_embed"))


class Transformer(nn.Module):
    """num_layers pre-norm blocks and a final norm: (batch, length, dim) embeddings in, features out."""

    num_layers: int
    num_heads: int
    ffn_dim: int
    use_bias: bool = True
    positions: str = "sin"  # or "rope"
    dropout: float = 0.0
    adaptive: bool = False  # norms conditioned on a vector (cond)
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(
        self, x, positions, valid, *, cond=None, causal=True, bidirectional=0, decode=False, deterministic=True
    ):
        if self.positions not in ("sin", "rope"):
            raise ValueError(f"positions must be 'sin' or 'rope', not {self.positions!r}")
        if self.positions == "sin":
            x = x + sinusoidal(positions, x.shape[-1])
        x = constrain(x.astype(self.dtype), ("batch", "length", "act_embed"))
        # causal, decode, deterministic (args 6-8 counting the module) steer Python control flow
        block = nn.remat(Block, static_argnums=(6, 7, 8)) if self.remat else Block
        for i in range(self.num_layers):
            x = block(
                self.num_heads,
                self.ffn_dim,
                self.use_bias,
                self.positions,
                self.dropout,
                self.adaptive,
                self.dtype,
                name=f"layers_{i}",
            )(x, cond, positions, valid, bidirectional, causal, decode, deterministic)
        return Norm(self.adaptive, self.dtype, name="out_norm")(x, cond)
