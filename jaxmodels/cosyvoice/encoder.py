"""CosyVoice's Transformer encoders (cosyvoice/transformer/encoder.py) as its CosyVoice-300M
configs build them: pre-norm layers of ESPnet's relative-position self-attention and a
feed-forward, norms at eps 1e-12, no macaron and no convolution module.

`ConformerEncoder` (the flow's token encoder, SiLU, bidirectional; the LM's text encoder,
SiLU, causal) and `TransformerEncoder` (the LM itself, ReLU, causal, a ReLU after its input
norm as upstream's "linear_legacy" input layer) differ only in those choices and in the
layers' norm names; `UpsampleConformerEncoder`, CosyVoice 2's flow encoder, puts the same
layers around a look-ahead layer and a twofold upsampling. The input is projected,
layer-normed and scaled by sqrt(width); no position is added (the relative attention
carries them). Padded rows are not zeroed (as upstream); no valid row reads them.

Decoding (`decode=True`, the causal LM): the first call on an empty cache (see
`jaxmodels.speechlm.transformer.empty_cache`) writes its keys at slot 0, every later call
appends at the cache's index; each token carries its position, so ragged prompts continue
their own count. A call scores the query against the relative-position sinusoids through
W_pos^T (q' = W_pos^T (q + v), then q' . p(i - j)): the product upstream forms as
(q + v) . W_pos p(i - j), without projecting the whole table at every step.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.nn import Dense, LayerNorm, constrain, repeated
from jaxmodels.nn.attention import (
    dot_product_attention,
    espnet_relative_position,
    position_sinusoids,
    relative_sinusoids,
    self_attention,
)

FRAMES = ("batch", None, "act_embed")
ACTIVATIONS = {"silu": jax.nn.silu, "relu": jax.nn.relu}


class EncoderLayer(nn.Module):
    """x + attention(LN x), then x + FF(LN x); `norms` names the two layer norms (the
    Conformer layer's norm_mha/norm_ff, the Transformer layer's norm1/norm2)."""

    heads: int
    linear_units: int
    activation: str = "silu"
    norms: tuple[str, str] = ("norm_mha", "norm_ff")
    causal: bool = False
    decode: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, valid, positions, chunk=0):
        """`positions`: relative_sinusoids' table (2L-1, D), or when decoding the tokens'
        positions (B, L); ``chunk`` > 0: attention within chunks (streaming training)."""
        y = LayerNorm(1e-12, dtype=self.dtype, name=self.norms[0])(x)
        if self.decode:
            x = x + self._cached_attention(y, valid, positions)
        else:
            position = espnet_relative_position(self, positions, self.heads)
            x = x + self_attention(
                y, valid, self.heads, self.dtype, position=position, causal=self.causal, chunk=chunk
            )
        y = LayerNorm(1e-12, dtype=self.dtype, name=self.norms[1])(x)
        y = Dense(self.linear_units, ("embed", "mlp"), dtype=self.dtype, name="feed_forward_w_1")(y)
        y = ACTIVATIONS[self.activation](y)
        x = x + Dense(x.shape[-1], ("mlp", "embed"), dtype=self.dtype, name="feed_forward_w_2")(y)
        return constrain(x, FRAMES)

    def _cached_attention(self, y, valid, positions):
        """Causal attention of y (B, T, D) at `positions` (B, T) over the cache and itself."""
        b, t, d = y.shape
        h, hd = self.heads, d // self.heads
        dense = lambda name, axes, bias=True: Dense(d, axes, bias, dtype=self.dtype, name=f"self_attn_{name}")  # noqa: E731
        q, k, v = (dense(f"linear_{n}", ("embed", "heads"))(y).reshape(b, t, h, hd) for n in "qkv")
        init = nn.with_logical_partitioning(nn.initializers.xavier_uniform(), ("heads", None))
        u_bias, v_bias = (self.param(f"self_attn_pos_bias_{n}", init, (h, hd)) for n in "uv")
        linear_pos = dense("linear_pos", ("embed", "heads"), False)
        if self.is_initializing():
            linear_pos(jnp.zeros((1, d), self.dtype))
        w_pos = nn.unbox(self.variables["params"]["self_attn_linear_pos"]["kernel"]).reshape(d, h, hd)

        cached = {
            name: self.variable("cache", name, jnp.zeros, a.shape, a.dtype)
            for name, a in (("key", k), ("value", v), ("valid", valid), ("position", positions))
        }
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        if not self.is_initializing():
            for name, a in (("key", k), ("value", v), ("valid", valid), ("position", positions)):
                cached[name].value = jax.lax.dynamic_update_slice_in_dim(cached[name].value, a, index.value, axis=1)
            index.value = index.value + t
            k, v, valid, key_positions = (cached[n].value for n in ("key", "value", "valid", "position"))
        else:
            key_positions = positions
        distance = positions[:, :, None] - key_positions[:, None, :]  # (B, T, S)
        mask = (valid[:, None, :] & (distance >= 0))[:, None]
        slots = k.shape[1]  # a causal query sees distances 0 ... slots - 1
        q_pos = jnp.einsum("bthe,dhe->bhtd", q + v_bias.astype(q.dtype), w_pos.astype(q.dtype))
        rows = jnp.einsum("bhtd,rd->bhtr", q_pos, position_sinusoids(jnp.arange(slots), d).astype(q.dtype))
        index = jnp.broadcast_to(jnp.clip(distance, 0, slots - 1)[:, None], (b, h, t, slots))
        bias = jnp.take_along_axis(rows, index, axis=-1)
        q = q + u_bias.astype(q.dtype)
        out = dot_product_attention(q, k, v, bias=bias * hd**-0.5, mask=mask).reshape(b, t, d)
        return dense("linear_out", ("heads", "embed"))(out)


class ConformerEncoder(nn.Module):
    """(B, L, D_in) embedded tokens, valid (B, L) -> (B, L, output_size): the input layer
    (linear, layer norm at eps 1e-5, a ReLU if `legacy_input`), x sqrt(output_size), the
    layers (scanned), a final layer norm at eps 1e-5."""

    output_size: int
    heads: int
    linear_units: int
    num_blocks: int
    activation: str = "silu"
    causal: bool = False
    legacy_input: bool = False
    norms: tuple[str, str] = ("norm_mha", "norm_ff")
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x, valid, positions=None, decode=False):
        """Decoding takes the tokens' positions (B, L); the full pass numbers them 0..L-1."""
        d = self.output_size
        x = Dense(d, ("embed", "mlp"), dtype=self.dtype, name="embed_out_0")(x)
        x = LayerNorm(1e-5, dtype=self.dtype, name="embed_out_1")(x)
        if self.legacy_input:
            x = jax.nn.relu(x)
        x = x * math.sqrt(d)
        layer = nn.remat(EncoderLayer) if self.remat else EncoderLayer
        stack = repeated(layer, self.num_blocks)(
            self.heads,
            self.linear_units,
            self.activation,
            self.norms,
            self.causal,
            decode,
            self.dtype,
            name="encoders",
        )
        if not decode:
            positions = relative_sinusoids(x.shape[1], d).astype(self.dtype)
        x, _ = stack(x, valid, positions)
        return LayerNorm(1e-5, dtype=self.dtype, name="after_norm")(x)


class UpsampleConformerEncoder(nn.Module):
    """CosyVoice 2's token encoder (cosyvoice/transformer/upsample_encoder.py): the input layer
    (linear, layer norm, x sqrt(d)); a look-ahead layer (a convolution over the frame and the
    next ``lookahead``, leaky ReLU, a causal convolution of 3, added to its input); the layers;
    the frames repeated ``stride`` times and a causal convolution of 2 stride + 1; a second
    input layer and ``up_blocks`` more layers; a final layer norm. ``chunk`` > 0 (streaming
    training) keeps each layer's attention within chunks of that many tokens (twice as many
    frames after the upsampling). (B, L, D) tokens, valid (B, L) -> (B, stride L, D)."""

    output_size: int
    heads: int
    linear_units: int
    num_blocks: int
    up_blocks: int = 4
    lookahead: int = 3
    stride: int = 2
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    def _input(self, x, name):
        x = Dense(self.output_size, ("embed", "mlp"), dtype=self.dtype, name=f"{name}_out_0")(x)
        return LayerNorm(1e-5, dtype=self.dtype, name=f"{name}_out_1")(x) * math.sqrt(self.output_size)

    def _layers(self, x, valid, count, chunk, name):
        layer = nn.remat(EncoderLayer) if self.remat else EncoderLayer
        stack = repeated(layer, count)(self.heads, self.linear_units, dtype=self.dtype, name=name)
        positions = relative_sinusoids(x.shape[1], self.output_size).astype(self.dtype)
        x, _ = stack(x, valid, positions, chunk)
        return x

    def _conv(self, x, kernel, pad, name):
        x = jnp.pad(x, ((0, 0), pad, (0, 0)))
        conv = nn.Conv(self.output_size, (kernel,), padding="VALID", dtype=self.dtype, name=name)
        return conv(x)

    @nn.compact
    def __call__(self, x, valid, chunk=0):
        x = self._input(x, "embed")
        h = nn.leaky_relu(self._conv(x, self.lookahead + 1, (0, self.lookahead), "pre_lookahead_layer_conv1"))
        x = x + self._conv(h, 3, (2, 0), "pre_lookahead_layer_conv2")
        x = self._layers(x, valid, self.num_blocks, chunk, "encoders")
        x = jnp.repeat(x, self.stride, axis=1)
        x = self._conv(x, 2 * self.stride + 1, (2 * self.stride, 0), "up_layer_conv")
        valid = jnp.repeat(valid, self.stride, axis=1)
        x = self._layers(self._input(x, "up_embed"), valid, self.up_blocks, chunk * self.stride, "up_encoders")
        return LayerNorm(1e-5, dtype=self.dtype, name="after_norm")(x)


def TransformerEncoder(output_size: int, heads: int, linear_units: int, num_blocks: int, **kwargs):
    """Upstream's TransformerEncoder as the LM configures it ("linear_legacy" input, ReLU,
    causal): a ConformerEncoder with the Transformer layer's norm names."""
    return ConformerEncoder(
        output_size,
        heads,
        linear_units,
        num_blocks,
        activation="relu",
        causal=True,
        legacy_input=True,
        norms=("norm1", "norm2"),
        **kwargs,
    )


def layer_path(key: str, value):
    """An upstream encoder layer's key ("self_attn.linear_q.weight") -> (its Flax path in the
    layer, the value in Flax layout: linear weights transposed)."""
    module, _, leaf = key.rpartition(".")
    if leaf.startswith("pos_bias_"):  # bare parameters of the attention
        return (f"{module}_{leaf}",), value
    name = "bias" if leaf == "bias" else "scale" if value.ndim == 1 else "kernel"
    return (module.replace(".", "_"), name), value.T if name == "kernel" else value
