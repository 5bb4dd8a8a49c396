"""SEANet encoder and decoder as the official EnCodec (facebookresearch/encodec,
encodec/modules/{conv,lstm,seanet}.py), channels-last: (batch, time, channels).

Each module runs on a whole signal, or, with ``streaming=True`` (causal models only),
on one chunk of a stream, carrying what the next chunk needs in the mutable ``cache``
collection: the last inputs of every convolution, the overlapping tail of every
transposed convolution, the LSTM state. Streaming gives the whole-signal result when
every encoder chunk but the last is a multiple of the hop length and the first chunk
is long enough for the reflect padding (upstream pads the start of the signal by
reflection, so the first chunk must hold the samples that reflection reads).
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("none", "weight_norm", "time_group_norm")


def torch_uniform(fan_in: int):
    """torch's default Conv/Linear init (kaiming_uniform with a=sqrt(5), and the bias's): U(+-1/sqrt(fan_in))."""
    bound = 1 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _weight_normed(module, shape, norm_axes, g_axis, axes, fan_in, dtype):
    """The kernel: plain, or weight-normalised as torch's weight_norm (g * v / ||v||, no epsilon)."""
    init = nn.with_logical_partitioning(torch_uniform(fan_in), axes)
    if module.norm != "weight_norm":
        return module.param("weight", init, shape).astype(dtype)
    v = module.param("weight_v", init, shape)
    # torch initialises g to ||v||, so a fresh layer's weight is v itself.
    g = module.param(
        "weight_g",
        nn.with_logical_partitioning(lambda key, s: jnp.sqrt(jnp.sum(jnp.square(v), axis=norm_axes)), (axes[g_axis],)),
        (shape[g_axis],),
    )
    v = jnp.asarray(v, jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=norm_axes, keepdims=True))
    return (jnp.expand_dims(g, norm_axes) * v / norm).astype(dtype)


def _check_norm(module):
    if module.norm not in NORMS:
        raise ValueError(f"norm={module.norm!r}; valid: {', '.join(NORMS)}")
    if module.causal and module.norm == "time_group_norm":
        raise ValueError("time_group_norm does not support causal evaluation (as upstream)")


def _group_norm(module, y, eps=1e-5):
    """GroupNorm(1, C): statistics over time and channels of each example (upstream's time_group_norm)."""
    c = y.shape[-1]
    scale = module.param("norm_scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (c,))
    bias = module.param("norm_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (c,))
    y32 = y.astype(jnp.float32)
    mean = jnp.mean(y32, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(y32 - mean), axis=(1, 2), keepdims=True)
    return ((y32 - mean) * jax.lax.rsqrt(var + eps) * scale + bias).astype(y.dtype)


class Snake1d(nn.Module):
    """x + sin(alpha x)^2 / alpha with a learnt alpha per channel, initialised to 1
    (SpeechTokenizer's Snake1d, the activation of its speechtokenizer_snake model)."""

    @nn.compact
    def __call__(self, x):
        alpha = self.param("alpha", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        return (x32 + jnp.square(jnp.sin(alpha * x32)) / (alpha + 1e-9)).astype(x.dtype)


ACTIVATIONS = ("ELU", "Snake")


def make_activation(kind: str, name: str):
    """The activation before a convolution; a Snake is a module named as upstream's nn.Sequential slot."""
    if kind == "ELU":
        return nn.elu
    if kind == "Snake":
        return Snake1d(name=name)
    raise ValueError(f"activation {kind!r}; valid: {', '.join(ACTIVATIONS)}")


class SConv1d(nn.Module):
    """Conv1d with upstream's padding: causal (all on the left) or centred (the extra one on
    the left), plus zeros on the right so that the last window is full."""

    out_channels: int
    kernel_size: int
    stride: int = 1
    dilation: int = 1
    causal: bool = False
    norm: str = "none"
    pad_mode: str = "reflect"
    dtype: jnp.dtype = jnp.float32

    def _pad(self, x, streaming):
        k = (self.kernel_size - 1) * self.dilation + 1
        total = k - self.stride
        length = x.shape[1]
        frames = (length - k + total) / self.stride + 1
        extra = (math.ceil(frames) - 1) * self.stride + k - total - length
        if not streaming:
            left, right = (total, extra) if self.causal else (total - total // 2, total // 2 + extra)
            if self.pad_mode == "reflect":
                return _pad_reflect(x, left, right)
            return jnp.pad(x, ((0, 0), (left, right), (0, 0)))
        # Streaming: the left context is the previous chunk's tail (the reflection of the
        # first samples before the first chunk); the right gets the same zeros as a whole
        # signal ending here would.
        started = self.variable("cache", "started", lambda: jnp.zeros((), bool))
        buffer = self.variable("cache", "buffer", lambda: jnp.zeros((x.shape[0], total, x.shape[2]), x.dtype))
        if total:
            start = (
                _pad_reflect(x, total, 0) if self.pad_mode == "reflect" else jnp.pad(x, ((0, 0), (total, 0), (0, 0)))
            )
            x = jnp.where(started.value, jnp.concatenate([buffer.value, x], axis=1), start)
            if not self.is_initializing():
                buffer.value = x[:, x.shape[1] - total :]
                started.value = jnp.ones((), bool)
        return jnp.pad(x, ((0, 0), (0, extra), (0, 0)))

    @nn.compact
    def __call__(self, x, streaming: bool = False):
        _check_norm(self)
        if streaming and not self.causal:
            raise ValueError("streaming needs a causal model (causal=True)")
        x = self._pad(x, streaming)
        shape = (self.kernel_size, x.shape[-1], self.out_channels)
        fan_in = self.kernel_size * x.shape[-1]
        w = _weight_normed(self, shape, (0, 1), 2, (None, "conv_in", "embed"), fan_in, self.dtype)
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            w,
            (self.stride,),
            [(0, 0)],
            rhs_dilation=(self.dilation,),
            dimension_numbers=("NWC", "WIO", "NWC"),
        )
        y = y + self.param(
            "bias", nn.with_logical_partitioning(torch_uniform(fan_in), ("embed",)), (self.out_channels,)
        ).astype(self.dtype)
        return _group_norm(self, y) if self.norm == "time_group_norm" else y


def _pad_reflect(x, left, right):
    """torch's reflect padding, with upstream's pad1d trick for inputs shorter than the padding."""
    length = x.shape[1]
    extra = max(left, right) - length + 1 if length <= max(left, right) else 0
    x = jnp.pad(x, ((0, 0), (0, extra), (0, 0)))
    x = jnp.pad(x, ((0, 0), (left, right), (0, 0)), mode="reflect")
    return x[:, : x.shape[1] - extra]


def conv_transpose(x, w, stride: int):
    """torch's ConvTranspose1d without padding: (B, T, in), (k, in, out) -> (B, (T - 1) * stride + k, out).

    Every input frame adds w's k taps, scaled by it, at stride * t: one matmul, then the
    ceil(k / stride) phases of the taps overlap-added. XLA:CPU differentiates the
    equivalent convolution of the stride-dilated input about ten times slower
    (benchmarks/codec_train_step.py), and it was most of a codec train step.
    """
    k, _, out = w.shape
    phases = -(-k // stride)
    w = jnp.pad(w, ((0, phases * stride - k), (0, 0), (0, 0)))
    b, t, _ = x.shape
    z = jnp.einsum("btc,kco->btko", x, w).reshape(b, t, phases, stride, out)
    y = sum(jnp.pad(z[:, :, i], ((0, 0), (i, phases - 1 - i), (0, 0), (0, 0))) for i in range(phases))
    return y.reshape(b, (t + phases - 1) * stride, out)[:, : (t - 1) * stride + k]


class SConvTranspose1d(nn.Module):
    """ConvTranspose1d with the kernel - stride surplus trimmed as upstream: all on the right
    when causal (trim_right_ratio 1), else the extra one on the left."""

    out_channels: int
    kernel_size: int
    stride: int = 1
    causal: bool = False
    norm: str = "none"
    trim_right_ratio: float = 1.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, streaming: bool = False):
        _check_norm(self)
        k, s = self.kernel_size, self.stride
        # torch's (in, out, k) weight as (k, in, out); its weight norm is over all but `in`.
        fan_in = k * self.out_channels  # torch computes it from the (in, out, k) weight's dim 1
        w = _weight_normed(
            self, (k, x.shape[-1], self.out_channels), (0, 2), 1, (None, "conv_in", "embed"), fan_in, self.dtype
        )
        y = conv_transpose(x.astype(self.dtype), w, s)
        bias = self.param(
            "bias", nn.with_logical_partitioning(torch_uniform(fan_in), ("embed",)), (self.out_channels,)
        ).astype(self.dtype)
        total = k - s
        if streaming:
            if not self.causal:
                raise ValueError("streaming needs a causal model (causal=True)")
            # The last k - s outputs overlap the next chunk's: keep them (bias-free) and add
            # them to its start. Whole-signal processing trims the final one.
            tail = self.variable("cache", "tail", lambda: jnp.zeros((x.shape[0], total, self.out_channels), y.dtype))
            y = y.at[:, :total].add(tail.value)
            if not self.is_initializing():
                tail.value = y[:, y.shape[1] - total :]
            return y[:, : y.shape[1] - total] + bias
        y = y + bias
        if self.norm == "time_group_norm":  # upstream normalises before trimming
            y = _group_norm(self, y)
        right = math.ceil(total * self.trim_right_ratio) if self.causal else total // 2
        return y[:, total - right : y.shape[1] - right]


class SLSTM(nn.Module):
    """torch.nn.LSTM (gates i, f, g, o; both biases) over time, plus the input (skip).

    Bidirectional (SpeechTokenizer's encoder): each layer runs forward and backward over
    the whole signal and concatenates both, so the output has twice the input's channels
    and the skip adds the input twice over (upstream's x.repeat(1, 1, 2))."""

    num_layers: int = 2
    bidirectional: bool = False
    dtype: jnp.dtype = jnp.float32

    def _direction(self, y, suffix, layer, d, carry, reverse):
        """One direction of one layer: (B, T, in) -> (final (h, c), states (B, T, d))."""
        bound = 1 / math.sqrt(d)  # torch's init: U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias

        def init(key, shape):
            return jax.random.uniform(key, shape, jnp.float32, -bound, bound)

        n_in = y.shape[-1]
        name = f"l{layer}{suffix}"
        w_ih = self.param(f"weight_ih_{name}", nn.with_logical_partitioning(init, ("mlp", "embed")), (4 * d, n_in))
        w_hh = self.param(f"weight_hh_{name}", nn.with_logical_partitioning(init, ("mlp", "embed")), (4 * d, d))
        b_ih = self.param(f"bias_ih_{name}", nn.with_logical_partitioning(init, ("mlp",)), (4 * d,))
        b_hh = self.param(f"bias_hh_{name}", nn.with_logical_partitioning(init, ("mlp",)), (4 * d,))
        # The input projection of all steps at once; the scan does only h @ W_hh.
        xw = jnp.einsum("btd,gd->tbg", y.astype(self.dtype), w_ih.astype(self.dtype)) + (b_ih + b_hh)

        def step(carry, xw_t):
            h, c = carry
            gates = xw_t.astype(jnp.float32) + h @ w_hh.T
            i, f, g, o = jnp.split(gates, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return jnp.stack([h, c]), h

        carry, hs = jax.lax.scan(step, carry, xw, reverse=reverse)
        return carry, hs.swapaxes(0, 1).astype(y.dtype)

    @nn.compact
    def __call__(self, x, streaming: bool = False):
        if streaming and self.bidirectional:
            raise ValueError("a bidirectional LSTM needs the whole signal: it cannot stream")
        b, _, d = x.shape
        y = x
        for layer in range(self.num_layers):
            state = (
                self.variable("cache", f"state_l{layer}", lambda: jnp.zeros((2, b, d), jnp.float32))
                if streaming
                else None
            )
            carry = state.value if streaming else jnp.zeros((2, b, d), jnp.float32)
            carry, forward = self._direction(y, "", layer, d, carry, reverse=False)
            if streaming and not self.is_initializing():
                state.value = carry
            if self.bidirectional:
                _, backward = self._direction(y, "_reverse", layer, d, jnp.zeros((2, b, d), jnp.float32), reverse=True)
                forward = jnp.concatenate([forward, backward], axis=-1)
            y = forward
        return y + (jnp.concatenate([x, x], axis=-1) if self.bidirectional else x)


class SEANetResnetBlock(nn.Module):
    """ELU, conv (kernel 3, dilated), ELU, conv (kernel 1), added to a shortcut (1x1 conv, or identity)."""

    dim: int
    kernel_sizes: Sequence[int] = (3, 1)
    dilations: Sequence[int] = (1, 1)
    norm: str = "weight_norm"
    causal: bool = False
    pad_mode: str = "reflect"
    compress: int = 2
    true_skip: bool = True
    activation: str = "ELU"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, streaming: bool = False):
        hidden = self.dim // self.compress
        y = x
        last = len(self.kernel_sizes) - 1
        for i, (k, d) in enumerate(zip(self.kernel_sizes, self.dilations)):
            y = SConv1d(
                self.dim if i == last else hidden,
                k,
                dilation=d,
                causal=self.causal,
                norm=self.norm,
                pad_mode=self.pad_mode,
                dtype=self.dtype,
                name=f"block_{2 * i + 1}",
            )(make_activation(self.activation, f"block_{2 * i}")(y), streaming)
        if self.true_skip:
            return x + y
        shortcut = SConv1d(
            self.dim, 1, causal=self.causal, norm=self.norm, pad_mode=self.pad_mode, dtype=self.dtype, name="shortcut"
        )
        return shortcut(x, streaming) + y


class SEANet(nn.Module):
    """The arguments SEANetEncoder and SEANetDecoder share, with upstream's names and defaults."""

    channels: int = 1
    dimension: int = 128
    n_filters: int = 32
    n_residual_layers: int = 1
    ratios: Sequence[int] = (8, 5, 4, 2)
    norm: str = "weight_norm"
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_base: int = 2
    causal: bool = False
    pad_mode: str = "reflect"
    true_skip: bool = False
    compress: int = 2
    lstm: int = 2
    activation: str = "ELU"
    dtype: jnp.dtype = jnp.float32

    @property
    def conv_kwargs(self):
        return {"causal": self.causal, "norm": self.norm, "pad_mode": self.pad_mode, "dtype": self.dtype}


class SEANetEncoder(SEANet):
    """Waveform (B, T, channels) -> embeddings (B, ceil(T / hop), dimension)."""

    bidirectional: bool = False  # SpeechTokenizer's encoder LSTM

    @nn.compact
    def __call__(self, x, streaming: bool = False):
        conv = self.conv_kwargs
        # Module names are upstream's nn.Sequential indices (model.<i>), so checkpoints map one to one.
        i = 0
        x = SConv1d(self.n_filters, self.kernel_size, name=f"model_{i}", **conv)(x, streaming)
        mult = 1
        for ratio in reversed(self.ratios):
            for j in range(self.n_residual_layers):
                i += 1
                x = SEANetResnetBlock(
                    mult * self.n_filters,
                    (self.residual_kernel_size, 1),
                    (self.dilation_base**j, 1),
                    compress=self.compress,
                    true_skip=self.true_skip,
                    activation=self.activation,
                    name=f"model_{i}",
                    **conv,
                )(x, streaming)
            i += 2  # the activation, then the downsampling conv
            x = make_activation(self.activation, f"model_{i - 1}")(x)
            x = SConv1d(mult * self.n_filters * 2, 2 * ratio, stride=ratio, name=f"model_{i}", **conv)(x, streaming)
            mult *= 2
        if self.lstm:
            i += 1
            x = SLSTM(self.lstm, self.bidirectional, dtype=self.dtype, name=f"model_{i}")(x, streaming)
        i += 2
        x = make_activation(self.activation, f"model_{i - 1}")(x)
        return SConv1d(self.dimension, self.last_kernel_size, name=f"model_{i}", **conv)(x, streaming)


class SEANetDecoder(SEANet):
    """Embeddings (B, frames, dimension) -> waveform (B, frames x hop, channels)."""

    trim_right_ratio: float = 1.0

    @nn.compact
    def __call__(self, z, streaming: bool = False):
        conv = self.conv_kwargs
        mult = 2 ** len(self.ratios)
        i = 0
        x = SConv1d(mult * self.n_filters, self.kernel_size, name=f"model_{i}", **conv)(z, streaming)
        if self.lstm:
            i += 1
            x = SLSTM(self.lstm, dtype=self.dtype, name=f"model_{i}")(x, streaming)
        for ratio in self.ratios:
            i += 2  # the activation, then the upsampling transposed conv
            x = make_activation(self.activation, f"model_{i - 1}")(x)
            x = SConvTranspose1d(
                mult * self.n_filters // 2,
                2 * ratio,
                stride=ratio,
                causal=self.causal,
                norm=self.norm,
                trim_right_ratio=self.trim_right_ratio,
                dtype=self.dtype,
                name=f"model_{i}",
            )(x, streaming)
            for j in range(self.n_residual_layers):
                i += 1
                x = SEANetResnetBlock(
                    mult * self.n_filters // 2,
                    (self.residual_kernel_size, 1),
                    (self.dilation_base**j, 1),
                    compress=self.compress,
                    true_skip=self.true_skip,
                    activation=self.activation,
                    name=f"model_{i}",
                    **conv,
                )(x, streaming)
            mult //= 2
        i += 2
        x = make_activation(self.activation, f"model_{i - 1}")(x)
        return SConv1d(self.channels, self.last_kernel_size, name=f"model_{i}", **conv)(x, streaming)
