"""Multi-head self-attention: with a fused qkv projection (timm's `Attention` layout), and
with separate projections named as ESPnet / wenet / transformers' Conformers name them,
optionally with ESPnet's relative positions (Dai et al. 2019, as RelPositionMultiHeadedAttention).

The fused qkv kernel is (embed, 3, heads, head_dim) and the output kernel (heads, head_dim,
embed), so tensor parallelism splits heads; converters reshape the (3D, D) and (D, D)
PyTorch weights into them.
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.nn.layers import Dense, constrain, dense_product


def xavier_uniform_flat(in_dims: int):
    """Xavier-uniform over the kernel seen as (prod(in dims), prod(out dims)), as for the torch Linear."""

    def init(key, shape, dtype=jnp.float32):
        fan_in, fan_out = math.prod(shape[:in_dims]), math.prod(shape[in_dims:])
        return nn.initializers.xavier_uniform()(key, (fan_in, fan_out), dtype).reshape(shape)

    return init


class Projection(nn.Module):
    """y = einsum(equation, x, kernel) + bias, with the kernel kept in its multi-axis shape. The
    equation contracts x's last ``in_dims`` axes with the kernel's first ("bld,dkhe->blkhe"), which
    ``dense_product`` computes."""

    equation: str
    kernel_shape: Sequence[int]
    kernel_axes: Sequence[str | None]
    in_dims: int  # leading kernel dims that contract with x
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        (x_letters, kernel_letters), out_letters = (a.split(",") for a in self.equation.split("->"))
        n = self.in_dims
        if x_letters[-n:] != kernel_letters[:n] or out_letters != [x_letters[:-n] + kernel_letters[n:]]:
            raise ValueError(
                f"Projection equation {self.equation!r}: x's last {n} axes must contract with the kernel's "
                "first and the output be x's other axes followed by the kernel's"
            )
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(xavier_uniform_flat(self.in_dims), self.kernel_axes),
            tuple(self.kernel_shape),
            jnp.float32,
        )
        y = dense_product(x.astype(self.dtype), kernel.astype(self.dtype), self.in_dims)
        if self.use_bias:
            out_shape, out_axes = self.kernel_shape[self.in_dims :], self.kernel_axes[self.in_dims :]
            bias = self.param(
                "bias", nn.with_logical_partitioning(nn.initializers.zeros, out_axes), tuple(out_shape), jnp.float32
            )
            y = y + bias.astype(self.dtype)
        return y


@jax.custom_vjp
def _attend(logits, v):
    """softmax(logits) v: logits (B, N, T, S) float32, v (B, S, N, H) -> (B, T, N, H)."""
    return _attend_fwd(logits, v)[0]


def _attend_fwd(logits, v):
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bnts,bsnh->btnh", probs.astype(v.dtype), v)
    return out, (probs, v, out)


def _attend_bwd(residuals, g):
    """The softmax's backward with FlashAttention's identity (Dao et al. 2022): each row's
    sum(dP * P) is sum(dO * O), a reduction over the head width instead of the keys. XLA:CPU
    fuses the keys' reduction with the dP product into a loop 5x slower than that product."""
    probs, v, out = residuals
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    d_probs = jnp.einsum("btnh,bsnh->bnts", g, v, preferred_element_type=jnp.float32)
    rows = jnp.einsum("btnh,btnh->bnt", f32(g), f32(out))
    d_logits = probs * (d_probs - rows[..., None])
    return d_logits, jnp.einsum("bnts,btnh->bsnh", probs.astype(g.dtype), g)


_attend.defvjp(_attend_fwd, _attend_bwd)


def _attention_custom_vjp(q, k, v, bias, mask):
    """jax.nn.dot_product_attention's "xla" composition (the same logits, masking and
    softmax in float32), the softmax and value product under one custom VJP."""
    if k.shape[2] != q.shape[2]:  # grouped-query attention: each key head serves q_heads / kv_heads
        k, v = (jnp.repeat(x, q.shape[2] // k.shape[2], axis=2) for x in (k, v))
    logits = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
    if bias is not None:
        logits = logits + bias
    if mask is not None:  # as jax.nn's masking: rows with no key left attend to all evenly
        logits = jnp.where(mask, logits, -0.7 * jnp.finfo(jnp.float32).max)
    return _attend(logits, v)


def dot_product_attention(q, k, v, implementation=None, lengths=None, bias=None, mask=None):
    """softmax(q k^T / sqrt(head_dim) + bias) v over (batch, length, heads, head_dim) inputs,
    as jax.nn.dot_product_attention: ``mask`` (bool, broadcast to (batch, heads, queries,
    keys)) keeps the keys where True; ``lengths`` (batch,) each row's first keys.

    ``implementation`` None picks, on the CPU, "custom_vjp": XLA's ops with the backward
    written out (`_attend_bwd`; forward and backward 1.2x faster than "xla" at DiT-XL/2's
    shapes, 1.7x at the AudioLM demo's: BENCHMARKS.md); on GPUs cuDNN's fused (flash) attention
    where it applies (16-bit inputs, head_dim a multiple of 8 up to 128, no bias or mask),
    which keeps the (length, length) scores out of device memory; jax.nn's own choice elsewhere.
    """
    if implementation is None and jax.default_backend() == "cpu":
        implementation = "custom_vjp"
    elif implementation is None and bias is None and mask is None:
        fused = jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
        implementation = "cudnn" if fused and q.shape[-1] % 8 == 0 and q.shape[-1] <= 128 else "xla"
    if implementation != "custom_vjp":
        return jax.nn.dot_product_attention(
            q, k, v, bias=bias, mask=mask, key_value_seq_lengths=lengths, implementation=implementation
        )
    if lengths is not None:
        keys = jnp.arange(k.shape[1])[None, :] < lengths[:, None]
        mask = keys[:, None, None, :] if mask is None else mask & keys[:, None, None, :]
    return _attention_custom_vjp(q, k, v, bias, mask)


class Attention(nn.Module):
    num_heads: int
    qkv_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    implementation: str | None = None  # "xla", "cudnn", "custom_vjp", or None: see dot_product_attention

    @nn.compact
    def __call__(self, x, lengths=None):  # (batch, length, embed); the keys of each row's first lengths
        dim = x.shape[-1]
        if dim % self.num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads={self.num_heads}")
        h, hd = self.num_heads, dim // self.num_heads
        qkv = Projection(
            "bld,dkhe->blkhe",
            (dim, 3, h, hd),
            ("embed", None, "heads", "kv"),
            1,
            self.qkv_bias,
            self.dtype,
            name="qkv",
        )(x)
        q, k, v = (constrain(qkv[:, :, i], ("batch", "length", "heads", "kv")) for i in range(3))
        out = dot_product_attention(q, k, v, self.implementation, lengths)
        return Projection("blhe,hed->bld", (h, hd, dim), ("heads", "kv", "embed"), 2, True, self.dtype, name="proj")(
            out
        )


def chunk_mask(length: int, chunk):
    """(length, length) bool: key j is seen by query i when j's chunk of ``chunk`` frames is not
    after i's (WeNet's static chunk mask, every earlier chunk visible); ``chunk`` 0 (it may be
    traced): every key."""
    size = jnp.maximum(chunk, 1)
    slots = jnp.arange(length)
    return (slots[None, :] // size <= slots[:, None] // size) | (chunk <= 0)


def self_attention(y, valid, heads, dtype, qk_input=None, position=None, prefix="self_attn", causal=False, chunk=0):
    """Multi-head attention of y (B, T, D) over the keys `valid` (B, T) marks (all where None),
    with `causal` only those at or before the query, with ``chunk`` > 0 those of its chunk and
    earlier ones (chunk_mask); projections `{prefix}_linear_q/k/v/out` with biases. Queries and
    keys come from `qk_input` (y where None); `position(q)` returns the query of the content
    term and an additive (B, H, T, T) score bias."""
    b, t, d = y.shape
    dense = lambda name, axes: Dense(d, axes, dtype=dtype, name=f"{prefix}_{name}")  # noqa: E731
    split = lambda h: h.reshape(b, t, heads, d // heads)  # noqa: E731
    qk = y if qk_input is None else qk_input
    q = split(dense("linear_q", ("embed", "heads"))(qk))
    k = split(dense("linear_k", ("embed", "heads"))(qk))
    v = split(dense("linear_v", ("embed", "heads"))(y))
    bias = None
    if position is not None:
        q, bias = position(q)
    mask = None if valid is None else valid[:, None, None, :]
    if causal:
        earlier = jnp.tril(jnp.ones((t, t), bool))[None, None]
        mask = earlier if mask is None else mask & earlier
    if not (isinstance(chunk, int) and chunk == 0):
        chunks = chunk_mask(t, chunk)[None, None]
        mask = chunks if mask is None else mask & chunks
    attended = dot_product_attention(q, k, v, bias=bias, mask=mask).reshape(b, t, d)
    return dense("linear_out", ("heads", "embed"))(attended)


def relative_gather(scores, index):
    """(B, H, T, P) scores of each query against P relative positions -> (B, H, T, T), entry
    (i, j) taken from position index[i, j]."""
    return jnp.take_along_axis(scores, jnp.broadcast_to(index, scores.shape[:2] + index.shape), axis=-1)


def position_sinusoids(positions, d: int):
    """(..., d) sinusoids of integer positions, sin and cos interleaved (ESPnet's), float32."""
    frequencies = jnp.exp(jnp.arange(0, d, 2, dtype=jnp.float32) * -(math.log(10000.0) / d))
    angles = positions.astype(jnp.float32)[..., None] * frequencies
    return jnp.stack([jnp.sin(angles), jnp.cos(angles)], -1).reshape(*positions.shape, d)


def relative_sinusoids(frames: int, d: int):
    """(2T-1, d) sinusoids of the relative positions T-1 ... 1-T, ESPnet's
    RelPositionalEncoding table."""
    return position_sinusoids(jnp.arange(frames - 1, -frames, -1), d)


def espnet_relative_position(module: nn.Module, positions, heads: int, prefix="self_attn"):
    """The `position` of self_attention for ESPnet's relative attention, its parameters
    created in `module` (`{prefix}_pos_bias_u`, `_pos_bias_v`, `_linear_pos` without bias):
    score(i, j) = ((q_i + u) . k_j + (q_i + v) . W_pos p(i - j)) / sqrt(head size), p the
    sinusoid of relative_sinusoids' table (2T-1, D)."""
    d = positions.shape[-1]
    head = d // heads
    init = nn.with_logical_partitioning(nn.initializers.xavier_uniform(), ("heads", None))
    u, v = (module.param(f"{prefix}_pos_bias_{name}", init, (heads, head)) for name in "uv")
    pos = Dense(d, ("embed", "heads"), use_bias=False, dtype=module.dtype, name=f"{prefix}_linear_pos")
    t = (positions.shape[0] + 1) // 2
    projected = pos(positions).reshape(2 * t - 1, heads, head)
    index = (t - 1) - jnp.arange(t)[:, None] + jnp.arange(t)[None]  # the row of i - j

    def position(q):
        shifted = q + v.astype(q.dtype)
        rows = jnp.einsum("bthd,phd->bhtp", shifted, projected, preferred_element_type=jnp.float32)
        return q + u.astype(q.dtype), relative_gather(rows, index) * head**-0.5

    return position
