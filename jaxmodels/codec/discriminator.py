"""The multi-scale STFT discriminator of EnCodec (encodec/msstftd.py; AudioCraft's
adversarial/discriminators/msstftd.py), channels-last.

Each scale takes the complex STFT of the waveform (real and imaginary parts as channels,
time x frequency as the image), runs 2-D convolutions strided over frequency and dilated
over time, and returns its logits and every layer's feature map (for feature matching).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxmodels.codec.seanet import _weight_normed, torch_uniform
from jaxmodels.nn.layers import grouped_conv


def hann_window(length: int) -> np.ndarray:
    """torch.hann_window (periodic)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)).astype(np.float32)


def stft(x, n_fft: int, hop_length: int, win_length: int, normalized: bool, center: bool = False):
    """torch.stft with a periodic Hann window: x (B, T) -> complex (B, frames, n_fft // 2 + 1).

    ``normalized`` divides by the window's L2 norm, as torchaudio's Spectrogram(normalized=True);
    ``center`` pads n_fft // 2 on both sides by reflection first, as torch.stft(center=True).
    """
    if center:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(n_fft // 2, n_fft // 2)], mode="reflect")
    window = np.zeros(n_fft, np.float32)
    left = (n_fft - win_length) // 2
    window[left : left + win_length] = hann_window(win_length)
    frames = 1 + (x.shape[-1] - n_fft) // hop_length
    index = np.arange(frames)[:, None] * hop_length + np.arange(n_fft)[None]
    spec = jnp.fft.rfft(x[..., index].astype(jnp.float32) * window, axis=-1)
    return spec / np.sqrt(np.sum(window**2)) if normalized else spec


class NormConv2d(nn.Module):
    """Conv2d with symmetric padding, weight norm optional (upstream's NormConv2d + get_2d_padding)."""

    features: int
    kernel_size: Sequence[int]
    stride: Sequence[int] = (1, 1)
    dilation: Sequence[int] = (1, 1)
    norm: str = "weight_norm"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        (kh, kw), (dh, dw) = self.kernel_size, self.dilation
        shape = (kh, kw, x.shape[-1], self.features)
        fan_in = kh * kw * x.shape[-1]
        w = _weight_normed(self, shape, (0, 1, 2), 3, (None, None, "conv_in", "embed"), fan_in, self.dtype)
        pad = (((kh - 1) * dh // 2,) * 2, ((kw - 1) * dw // 2,) * 2)
        y = grouped_conv(x.astype(self.dtype), w, self.stride, pad, 1, ("NHWC", "HWIO", "NHWC"), (dh, dw))
        return y + self.param(
            "bias", nn.with_logical_partitioning(torch_uniform(fan_in), ("embed",)), (self.features,)
        ).astype(self.dtype)


class DiscriminatorSTFT(nn.Module):
    """One scale: waveform (B, T, channels) -> (logits (B, frames, freq', out), feature maps)."""

    filters: int
    out_channels: int = 1
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    max_filters: int = 1024
    filters_scale: int = 1
    kernel_size: Sequence[int] = (3, 9)
    dilations: Sequence[int] = (1, 2, 4)
    stride: Sequence[int] = (1, 2)
    normalized: bool = True
    norm: str = "weight_norm"
    negative_slope: float = 0.2
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        spec = stft(jnp.moveaxis(x, -1, 1), self.n_fft, self.hop_length, self.win_length, self.normalized)
        # (B, C, frames, freq) complex -> (B, frames, freq, [real of each channel, imag of each channel])
        z = jnp.concatenate([spec.real, spec.imag], axis=1).transpose(0, 2, 3, 1)
        act = lambda y: nn.leaky_relu(y, self.negative_slope)  # noqa: E731
        k0 = self.kernel_size[0]
        fmaps = []
        z = act(NormConv2d(self.filters, self.kernel_size, norm="none", dtype=self.dtype, name="convs_0")(z))
        fmaps.append(z)
        for i, d in enumerate(self.dilations):
            out = min(self.filters_scale ** (i + 1) * self.filters, self.max_filters)
            z = act(
                NormConv2d(out, self.kernel_size, self.stride, (d, 1), self.norm, self.dtype, name=f"convs_{i + 1}")(z)
            )
            fmaps.append(z)
        out = min(self.filters_scale ** (len(self.dilations) + 1) * self.filters, self.max_filters)
        z = act(
            NormConv2d(out, (k0, k0), norm=self.norm, dtype=self.dtype, name=f"convs_{len(self.dilations) + 1}")(z)
        )
        fmaps.append(z)
        logits = NormConv2d(self.out_channels, (k0, k0), norm=self.norm, dtype=self.dtype, name="conv_post")(z)
        return logits, fmaps


class MultiScaleSTFTDiscriminator(nn.Module):
    """Sub-discriminators at several STFT resolutions; returns (list of logits, list of feature-map lists)."""

    filters: int = 32
    out_channels: int = 1
    n_ffts: Sequence[int] = (1024, 2048, 512, 256, 128)  # AudioCraft's compression default
    hop_lengths: Sequence[int] = (256, 512, 128, 64, 32)
    win_lengths: Sequence[int] = (1024, 2048, 512, 256, 128)
    negative_slope: float = 0.3
    norm: str = "weight_norm"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if not len(self.n_ffts) == len(self.hop_lengths) == len(self.win_lengths):
            raise ValueError("n_ffts, hop_lengths and win_lengths need one entry per scale")
        logits, fmaps = [], []
        for i, (n_fft, hop, win) in enumerate(zip(self.n_ffts, self.hop_lengths, self.win_lengths)):
            logit, fmap = DiscriminatorSTFT(
                self.filters,
                self.out_channels,
                n_fft,
                hop,
                win,
                norm=self.norm,
                negative_slope=self.negative_slope,
                dtype=self.dtype,
                name=f"discriminators_{i}",
            )(x)
            logits.append(logit.astype(jnp.float32))
            fmaps.append([f.astype(jnp.float32) for f in fmap])
        return logits, fmaps
