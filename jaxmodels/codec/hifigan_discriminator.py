"""HiFi-GAN's multi-period and multi-scale discriminators (Kong et al. 2020; jik876/hifi-gan,
models.py: DiscriminatorP, MultiPeriodDiscriminator, DiscriminatorS, MultiScaleDiscriminator),
and the multi-resolution spectrogram discriminator CosyVoice trains its HiFT vocoder with
(cosyvoice/hifigan/discriminator.py: SpecDiscriminator, MultiResSpecDiscriminator), channels-last.

A period discriminator folds the waveform into (T / p, p) and convolves along time only, so
each of the p columns is one phase of a periodic signal; a scale discriminator convolves the
waveform itself with strided, grouped 1-D convolutions, at the raw rate and after average
pooling. Each returns its logits and every layer's feature map, the logits' layer included,
as upstream (feature matching runs over all of them).

The first scale discriminator is spectrally normalised as upstream: its kernels are divided
by their largest singular value, estimated by one power iteration per training step from the
vectors kept in the ``spectral`` collection (torch.nn.utils.spectral_norm's weight_u and
weight_v). Apply with ``mutable=["spectral"]`` to take the iteration; without, the kept
vectors are used as they are.
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.codec.discriminator import MultiScaleSTFTDiscriminator, stft
from jaxmodels.codec.seanet import _weight_normed, torch_uniform
from jaxmodels.nn.layers import grouped_conv

LRELU_SLOPE = 0.1  # upstream's LRELU_SLOPE


def _normalize(x, eps=1e-12):
    return x / jnp.maximum(jnp.linalg.norm(x), eps)  # torch's F.normalize


def _kernel(module, shape, axes, fan_in, dtype):
    """A (..., in, out) kernel, weight-normalised over all but `out`, spectrally normalised, or plain."""
    if module.norm != "spectral_norm":
        return _weight_normed(module, shape, tuple(range(len(shape) - 1)), len(shape) - 1, axes, fan_in, dtype)
    w = module.param("weight_orig", nn.with_logical_partitioning(torch_uniform(fan_in), axes), shape)
    matrix = jnp.reshape(jnp.asarray(w, jnp.float32), (-1, shape[-1])).T  # torch's (out, in * k)
    u = module.variable(
        "spectral", "weight_u", lambda: _normalize(jax.random.normal(module.make_rng("params"), (shape[-1],)))
    )
    v = module.variable(
        "spectral", "weight_v", lambda: _normalize(jax.random.normal(module.make_rng("params"), matrix.shape[1:]))
    )
    u_value, v_value = u.value, v.value
    if module.is_mutable_collection("spectral") and not module.is_initializing():
        v_value = _normalize(matrix.T @ u_value)
        u_value = _normalize(matrix @ v_value)
        u.value, v.value = u_value, v_value
    # The vectors are constants of the step (torch computes them under no_grad).
    u_value, v_value = jax.lax.stop_gradient(u_value), jax.lax.stop_gradient(v_value)
    sigma = u_value @ (matrix @ v_value)
    return (w / sigma).astype(dtype)


class Conv(nn.Module):
    """A 1-D (kernel (k,)) or 2-D convolution with symmetric zero padding, feature groups and
    dilation, weight-normalised (torch's weight_norm), spectrally normalised or plain."""

    features: int
    kernel_size: Sequence[int]
    stride: Sequence[int]
    padding: Sequence[int]
    groups: int = 1
    norm: str = "weight_norm"
    dtype: jnp.dtype = jnp.float32
    dilation: Sequence[int] | None = None

    @nn.compact
    def __call__(self, x):
        n = len(self.kernel_size)
        shape = (*self.kernel_size, x.shape[-1] // self.groups, self.features)
        fan_in = x.shape[-1] // self.groups * math.prod(self.kernel_size)
        w = _kernel(self, shape, (None,) * n + ("conv_in", "embed"), fan_in, self.dtype)
        spec = ("NWC", "WIO", "NWC") if n == 1 else ("NHWC", "HWIO", "NHWC")
        padding = [(p, p) for p in self.padding]
        y = grouped_conv(
            x.astype(self.dtype), w, tuple(self.stride), padding, self.groups, spec, rhs_dilation=self.dilation
        )
        bias = self.param("bias", nn.with_logical_partitioning(torch_uniform(fan_in), ("embed",)), (self.features,))
        return y + bias.astype(self.dtype)


class PeriodDiscriminator(nn.Module):
    """DiscriminatorP: (B, T, 1) -> (logits (B, frames, period, 1), feature maps)."""

    period: int
    kernel_size: int = 5
    stride: int = 3
    channels: Sequence[int] = (32, 128, 512, 1024, 1024)
    norm: str = "weight_norm"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, t, c = x.shape
        if t % self.period:  # upstream pads the end by reflection to a whole number of periods
            x = jnp.pad(x, ((0, 0), (0, self.period - t % self.period), (0, 0)), mode="reflect")
        z = x.reshape(b, -1, self.period, c)
        k, pad = self.kernel_size, (self.kernel_size - 1) // 2
        fmaps = []
        for i, ch in enumerate(self.channels):
            stride = self.stride if i < len(self.channels) - 1 else 1
            z = Conv(ch, (k, 1), (stride, 1), (pad, 0), norm=self.norm, dtype=self.dtype, name=f"convs_{i}")(z)
            z = nn.leaky_relu(z, LRELU_SLOPE)
            fmaps.append(z)
        z = Conv(1, (3, 1), (1, 1), (1, 0), norm=self.norm, dtype=self.dtype, name="conv_post")(z)
        fmaps.append(z)
        return z, fmaps


# DiscriminatorS's convolutions: (out channels, kernel, stride, groups); padding is (kernel - 1) / 2.
SCALE_LAYERS = (
    (128, 15, 1, 1),
    (128, 41, 2, 4),
    (256, 41, 2, 16),
    (512, 41, 4, 16),
    (1024, 41, 4, 16),
    (1024, 41, 1, 16),
    (1024, 5, 1, 1),
)


class ScaleDiscriminator(nn.Module):
    """DiscriminatorS: (B, T, 1) -> (logits (B, frames, 1), feature maps); channel_divisor (up
    to 8, so that every group keeps a channel) narrows every layer."""

    norm: str = "weight_norm"
    dtype: jnp.dtype = jnp.float32
    channel_divisor: int = 1

    @nn.compact
    def __call__(self, x):
        fmaps = []
        for i, (ch, k, s, g) in enumerate(SCALE_LAYERS):
            ch = ch // self.channel_divisor
            x = Conv(ch, (k,), (s,), ((k - 1) // 2,), g, self.norm, self.dtype, name=f"convs_{i}")(x)
            x = nn.leaky_relu(x, LRELU_SLOPE)
            fmaps.append(x)
        x = Conv(1, (3,), (1,), (1,), norm=self.norm, dtype=self.dtype, name="conv_post")(x)
        fmaps.append(x)
        return x, fmaps


def _average_pool(x):
    """AvgPool1d(4, 2, padding=2), zeros counted in the average (count_include_pad)."""
    x = jnp.pad(x, ((0, 0), (2, 2), (0, 0)))
    return nn.avg_pool(x, (4,), (2,), padding="VALID")


class MultiPeriodDiscriminator(nn.Module):
    """One DiscriminatorP per period; returns (list of logits, list of feature-map lists)."""

    periods: Sequence[int] = (2, 3, 5, 7, 11)
    dtype: jnp.dtype = jnp.float32
    channel_divisor: int = 1

    @nn.compact
    def __call__(self, x):
        logits, fmaps = [], []
        channels = tuple(c // self.channel_divisor for c in PeriodDiscriminator.channels)
        for i, p in enumerate(self.periods):
            logit, fmap = PeriodDiscriminator(p, channels=channels, dtype=self.dtype, name=f"discriminators_{i}")(x)
            logits.append(logit.astype(jnp.float32))
            fmaps.append([f.astype(jnp.float32) for f in fmap])
        return logits, fmaps


class MultiScaleDiscriminator(nn.Module):
    """DiscriminatorS on the waveform, then on it average-pooled once and twice (the first
    spectrally normalised); returns (list of logits, list of feature-map lists)."""

    scales: int = 3
    dtype: jnp.dtype = jnp.float32
    channel_divisor: int = 1

    @nn.compact
    def __call__(self, x):
        logits, fmaps = [], []
        for i in range(self.scales):
            if i:
                x = _average_pool(x)
            norm = "spectral_norm" if i == 0 else "weight_norm"
            logit, fmap = ScaleDiscriminator(norm, self.dtype, self.channel_divisor, name=f"discriminators_{i}")(x)
            logits.append(logit.astype(jnp.float32))
            fmaps.append([f.astype(jnp.float32) for f in fmap])
        return logits, fmaps


class SpecDiscriminator(nn.Module):
    """SpecDiscriminator: the STFT magnitude (centred, reflect padding, Hann window of win_length)
    as a (time, frequency) image through five 2-D convolutions strided over frequency:
    (B, T, 1) -> (logits (B, frames, freq', 1), feature maps)."""

    n_fft: int
    hop_length: int
    win_length: int
    dtype: jnp.dtype = jnp.float32
    channels: int = 32

    @nn.compact
    def __call__(self, x):
        z = jnp.abs(stft(x[..., 0], self.n_fft, self.hop_length, self.win_length, False, center=True))[..., None]
        fmaps = []
        for i, (k, stride) in enumerate([((3, 9), 1), ((3, 9), 2), ((3, 9), 2), ((3, 9), 2), ((3, 3), 1)]):
            padding = (k[0] // 2, k[1] // 2)
            z = Conv(self.channels, k, (1, stride), padding, dtype=self.dtype, name=f"discriminators_{i}")(z)
            z = nn.leaky_relu(z, LRELU_SLOPE)
            fmaps.append(z)
        z = Conv(1, (3, 3), (1, 1), (1, 1), dtype=self.dtype, name="out")(z)
        fmaps.append(z)
        return z, fmaps


class MultiResSpecDiscriminator(nn.Module):
    """One SpecDiscriminator per (n_fft, hop, window) resolution; returns (list of logits, list of
    feature-map lists)."""

    n_ffts: Sequence[int] = (1024, 2048, 512)
    hop_lengths: Sequence[int] = (120, 240, 50)
    win_lengths: Sequence[int] = (600, 1200, 240)
    dtype: jnp.dtype = jnp.float32
    channel_divisor: int = 1

    @nn.compact
    def __call__(self, x):
        logits, fmaps = [], []
        for i, (n_fft, hop, win) in enumerate(zip(self.n_ffts, self.hop_lengths, self.win_lengths)):
            channels = SpecDiscriminator.channels // self.channel_divisor
            logit, fmap = SpecDiscriminator(n_fft, hop, win, self.dtype, channels, name=f"discriminators_{i}")(x)
            logits.append(logit.astype(jnp.float32))
            fmaps.append([f.astype(jnp.float32) for f in fmap])
        return logits, fmaps


DISCRIMINATORS = ("msstft", "mpd", "msd", "mrsd")


class MultipleDiscriminator(nn.Module):
    """Several discriminators as one: EnCodec's MS-STFT (msstft), HiFi-GAN's multi-period (mpd)
    and multi-scale (msd) ones, CosyVoice's multi-resolution spectrogram one (mrsd), each a
    submodule of its kind's name; their sub-discriminators' logits and feature maps in one list
    each (SpeechTokenizer trains with mpd, msd and msstft, CosyVoice's HiFT with mpd and mrsd)."""

    kinds: Sequence[str] = ("msstft",)
    stft: dict = None  # MultiScaleSTFTDiscriminator's fields
    periods: Sequence[int] = (2, 3, 5, 7, 11)
    scales: int = 3
    dtype: jnp.dtype = jnp.float32
    # Narrows mpd, msd and mrsd (1: upstream's widths; at most 8, msd's 16 groups of 128 channels).
    channel_divisor: int = 1

    @nn.compact
    def __call__(self, x):
        unknown = sorted(set(self.kinds) - set(DISCRIMINATORS))
        if unknown or not self.kinds:
            raise ValueError(f"discriminators {list(self.kinds)}: valid kinds are {', '.join(DISCRIMINATORS)}")
        if self.channel_divisor not in (1, 2, 4, 8):
            raise ValueError(f"discriminator channel_divisor {self.channel_divisor}: valid are 1, 2, 4, 8")
        d = self.channel_divisor
        build = {
            "msstft": lambda: MultiScaleSTFTDiscriminator(**(self.stft or {}), dtype=self.dtype, name="msstft"),
            "mpd": lambda: MultiPeriodDiscriminator(tuple(self.periods), self.dtype, d, name="mpd"),
            "msd": lambda: MultiScaleDiscriminator(self.scales, self.dtype, d, name="msd"),
            "mrsd": lambda: MultiResSpecDiscriminator(dtype=self.dtype, channel_divisor=d, name="mrsd"),
        }
        logits, fmaps = [], []
        for kind in self.kinds:
            logit, fmap = build[kind]()(x)
            logits += logit
            fmaps += fmap
        return logits, fmaps
