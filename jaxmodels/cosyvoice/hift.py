"""CosyVoice's HiFT vocoder (FunAudioLLM/CosyVoice, cosyvoice/hifigan/generator.py and
f0_predictor.py; HiFTNet, Li et al. 2023): mel frames -> waveform, channels-last.

An F0 predictor reads the mel; the F0, repeated to the sample rate, drives a neural source
filter (sines at the F0 and its harmonics, noise where unvoiced, merged by a linear layer);
HiFi-GAN's upsampling path turns the mel into the spectrum of a short-time Fourier transform
(n_fft 16, hop 4), adding at each stage the source's own STFT brought to that rate; the
magnitude (exp) and phase (sin) of the last stage go through the inverse STFT.

The source's sines have random initial phases (the harmonics'; SineGen at 22.05 kHz) and
additive noise, drawn from the ``rng`` given; SineGen2 (every other rate) integrates the
phase at the frame rate and interpolates it, as upstream selects them.
"""

import dataclasses
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.codec import losses
from jaxmodels.codec.discriminator import hann_window, stft
from jaxmodels.codec.hifigan_discriminator import Conv
from jaxmodels.codec.seanet import SConvTranspose1d, Snake1d
from jaxmodels.nn import variants
from jaxmodels.nn.variants import named_config


@dataclasses.dataclass(frozen=True)
class HiFTConfig:
    """HiFTGenerator's arguments (upstream's names in the comments); defaults are CosyVoice-300M's."""

    sample_rate: int = 22050
    in_channels: int = 80  # mel bins
    base_channels: int = 512
    nb_harmonics: int = 8
    sine_amp: float = 0.1  # nsf_alpha
    noise_std: float = 0.003  # nsf_sigma
    voiced_threshold: float = 10.0  # nsf_voiced_threshold, Hz
    upsample_rates: Sequence[int] = (8, 8)
    upsample_kernel_sizes: Sequence[int] = (16, 16)
    n_fft: int = 16  # istft_params
    hop_length: int = 4
    resblock_kernel_sizes: Sequence[int] = (3, 7, 11)
    resblock_dilation_sizes: Sequence[Sequence[int]] = ((1, 3, 5),) * 3
    source_resblock_kernel_sizes: Sequence[int] = (7, 11)
    source_resblock_dilation_sizes: Sequence[Sequence[int]] = ((1, 3, 5),) * 2
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_channels: int = 512  # ConvRNNF0Predictor's cond_channels

    @property
    def hop(self) -> int:
        """Waveform samples per mel frame."""
        return math.prod(self.upsample_rates) * self.hop_length


CONFIGS = {
    "hift_cosyvoice_300m": HiFTConfig(),  # 22.05 kHz, 256 samples a frame, 20,460,591 parameters
    "hift_cosyvoice2": HiFTConfig(  # 24 kHz, 480 samples a frame, 20,821,295 parameters
        sample_rate=24000,
        upsample_rates=(8, 5, 3),
        upsample_kernel_sizes=(16, 11, 7),
        source_resblock_kernel_sizes=(7, 7, 11),
        source_resblock_dilation_sizes=((1, 3, 5),) * 3,
    ),
}


def _conv(features, kernel, padding, name, dilation=1, stride=1, norm="weight_norm"):
    return Conv(features, (kernel,), (stride,), (padding,), norm=norm, dilation=(dilation,), name=name)


class ResBlock(nn.Module):
    """HiFi-GAN's ResBlock1 with Snake activations: per dilation, x += conv(snake(conv_d(snake(x))))."""

    channels: int
    kernel_size: int
    dilations: Sequence[int]

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        for n, d in enumerate(self.dilations):
            y = Snake1d(name=f"activations1_{n}")(x)
            y = _conv(self.channels, k, d * (k - 1) // 2, f"convs1_{n}", dilation=d)(y)
            y = Snake1d(name=f"activations2_{n}")(y)
            x = x + _conv(self.channels, k, (k - 1) // 2, f"convs2_{n}")(y)
        return x


class F0Predictor(nn.Module):
    """ConvRNNF0Predictor: five weight-normed 3-tap convolutions with ELU, a linear layer, |.|:
    mel (B, T, bins) -> F0 in Hz (B, T)."""

    channels: int = 512

    @nn.compact
    def __call__(self, mel):
        x = mel
        for i in range(5):
            x = nn.elu(_conv(self.channels, 3, 1, f"condnet_{2 * i}")(x))
        return jnp.abs(nn.Dense(1, name="classifier")(x)[..., 0])


def _interpolate_linear(x, size: int, scale: float):
    """torch's F.interpolate(mode="linear", align_corners=False) along axis 1 with a scale factor."""
    coords = np.maximum((np.arange(size) + 0.5) / scale - 0.5, 0.0)
    low = np.floor(coords).astype(np.int32)
    high = np.minimum(low + 1, x.shape[1] - 1)
    frac = (coords - low).astype(np.float32)[None, :, None]
    return x[:, low] * (1 - frac) + x[:, high] * frac


def sine_source(cfg: HiFTConfig, f0, rng):
    """SineGen / SineGen2 at the sample rate: F0 (B, L) -> (sines plus noise (B, L, harmonics + 1))."""
    harmonics = jnp.asarray(f0)[..., None] * np.arange(1, cfg.nb_harmonics + 2, dtype=np.float32)
    k_phase, k_noise = jax.random.split(rng)
    batch, dim = f0.shape[0], cfg.nb_harmonics + 1
    if cfg.sample_rate == 22050:  # SineGen: the phase is the sum over samples, the harmonics' shifted at random
        theta = 2 * np.pi * (jnp.cumsum(harmonics / cfg.sample_rate, axis=1) % 1)
        phase = jax.random.uniform(k_phase, (batch, 1, dim), minval=-np.pi, maxval=np.pi).at[..., 0].set(0.0)
        sines = cfg.sine_amp * jnp.sin(theta + phase)
    else:  # SineGen2: summed at the frame rate, then interpolated
        rad = (harmonics / cfg.sample_rate) % 1
        start = jax.random.uniform(k_phase, (batch, dim)).at[:, 0].set(0.0)
        rad = rad.at[:, 0].add(start)
        frames = f0.shape[1] // cfg.hop
        phase = 2 * np.pi * jnp.cumsum(_interpolate_linear(rad, frames, 1 / cfg.hop), axis=1)
        sines = cfg.sine_amp * jnp.sin(_interpolate_linear(phase * cfg.hop, f0.shape[1], cfg.hop))
    voiced = (f0 > cfg.voiced_threshold).astype(jnp.float32)[..., None]
    noise_amp = voiced * cfg.noise_std + (1 - voiced) * cfg.sine_amp / 3
    return sines * voiced + noise_amp * jax.random.normal(k_noise, sines.shape)


class SourceModule(nn.Module):
    """SourceModuleHnNSF's harmonic branch: F0 at the sample rate (B, L) -> excitation (B, L)."""

    config: HiFTConfig

    @nn.compact
    def __call__(self, f0, rng):
        sines = jax.lax.stop_gradient(sine_source(self.config, f0, rng))  # upstream generates under no_grad
        return jnp.tanh(nn.Dense(1, name="l_linear")(sines)[..., 0])


def mel_spectrogram(wav, sample_rate: int, n_fft: int, hop: int, win: int, n_mels: int = 80, f_min=0.0, f_max=8000.0):
    """Matcha-TTS's mel_spectrogram, CosyVoice's features (matcha/utils/audio.py): reflect padding
    of (n_fft - hop) / 2, an uncentred STFT with a periodic Hann window of ``win``, magnitude
    sqrt(re^2 + im^2 + 1e-9), librosa's Slaney-scale, Slaney-normalised mel filters (f_max None:
    half the sample rate), natural log clamped at 1e-5. (B, L) -> (B, L // hop, n_mels)."""
    pad = (n_fft - hop) // 2
    spec = stft(jnp.pad(wav.astype(jnp.float32), ((0, 0), (pad, pad)), mode="reflect"), n_fft, hop, win, False)
    magnitude = jnp.sqrt(jnp.square(spec.real) + jnp.square(spec.imag) + 1e-9)
    fb = losses.mel_filterbank(
        n_fft // 2 + 1, f_min, f_max or sample_rate / 2, n_mels, sample_rate, "slaney", "slaney"
    )
    return jnp.log(jnp.maximum(magnitude @ fb, 1e-5))


def istft(spec, n_fft: int, hop: int):
    """torch.istft(center=True) with a periodic Hann window: (B, F, n_fft // 2 + 1) -> (B, hop * (F - 1)).

    Each frame's inverse transform, windowed, is added at its hop (n_fft / hop overlapping
    phases), divided by the overlap-added squared window, and the centring padding cut."""
    window = hann_window(n_fft)
    frames = jnp.fft.irfft(spec, n=n_fft, axis=-1) * window
    b, f, _ = frames.shape
    r = n_fft // hop
    z = frames.reshape(b, f, r, hop)
    y = sum(jnp.pad(z[:, :, i], ((0, 0), (i, r - 1 - i), (0, 0))) for i in range(r)).reshape(b, -1)
    envelope = np.zeros((f + r - 1) * hop, np.float32)
    for t in range(f):
        envelope[t * hop : t * hop + n_fft] += window**2
    start = n_fft // 2
    return y[:, start : start + hop * (f - 1)] / envelope[start : start + hop * (f - 1)]


class HiFTGenerator(nn.Module):
    """mel (B, T, bins) -> (waveform (B, T * hop), F0 (B, T)); ``decode`` takes the source itself."""

    config: HiFTConfig = HiFTConfig()

    def setup(self):
        c = self.config
        self.f0_predictor = F0Predictor(c.f0_channels)
        self.m_source = SourceModule(c)
        self.conv_pre = _conv(c.base_channels, 7, 3, "conv_pre")
        self.ups = [
            SConvTranspose1d(c.base_channels // 2 ** (i + 1), k, u, norm="weight_norm", name=f"ups_{i}")
            for i, (u, k) in enumerate(zip(c.upsample_rates, c.upsample_kernel_sizes))
        ]
        # The source's STFT, brought to each stage's rate by a strided convolution (k = 2u, no weight norm).
        strides = np.cumprod([1, *c.upsample_rates[::-1][:-1]])[::-1]
        downs, source_blocks = [], []
        for i, (u, k, d) in enumerate(zip(strides, c.source_resblock_kernel_sizes, c.source_resblock_dilation_sizes)):
            ch = c.base_channels // 2 ** (i + 1)
            u = int(u)
            kernel, padding = (1, 0) if u == 1 else (2 * u, u // 2)
            downs.append(_conv(ch, kernel, padding, f"source_downs_{i}", stride=u, norm="none"))
            source_blocks.append(ResBlock(ch, k, tuple(d), name=f"source_resblocks_{i}"))
        self.source_downs, self.source_resblocks = downs, source_blocks
        self.resblocks = [
            ResBlock(
                c.base_channels // 2 ** (i + 1), k, tuple(d), name=f"resblocks_{i * len(c.resblock_kernel_sizes) + j}"
            )
            for i in range(len(c.upsample_rates))
            for j, (k, d) in enumerate(zip(c.resblock_kernel_sizes, c.resblock_dilation_sizes))
        ]
        self.conv_post = _conv(c.n_fft + 2, 7, 3, "conv_post")

    def source(self, f0, rng):
        """Frame F0 (B, T), repeated to the sample rate -> excitation (B, T * hop)."""
        return self.m_source(jnp.repeat(f0, self.config.hop, axis=1), rng)

    def decode(self, mel, source):
        c = self.config
        spec = stft(source, c.n_fft, c.hop_length, c.n_fft, False, center=True)
        s = jnp.concatenate([spec.real, spec.imag], axis=-1)
        x = self.conv_pre(mel)
        n_kernels = len(c.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(nn.leaky_relu(x, c.lrelu_slope))
            if i == len(self.ups) - 1:
                x = jnp.concatenate([x[:, 1:2], x], axis=1)  # ReflectionPad1d((1, 0))
            x = x + self.source_resblocks[i](self.source_downs[i](s))
            x = sum(self.resblocks[i * n_kernels + j](x) for j in range(n_kernels)) / n_kernels
        x = self.conv_post(nn.leaky_relu(x, 0.01))  # torch's default slope here
        half = c.n_fft // 2 + 1
        magnitude = jnp.minimum(jnp.exp(x[..., :half]), 100.0)
        phase = jnp.sin(x[..., half:])
        y = istft(magnitude * jnp.exp(1j * phase), c.n_fft, c.hop_length)
        return jnp.clip(y, -c.audio_limit, c.audio_limit)

    def __call__(self, mel, rng):
        f0 = self.f0_predictor(mel)
        return self.decode(mel, self.source(f0, rng)), f0


def config(name: str, **overrides) -> HiFTConfig:
    """A named configuration, fields overridden; an unknown name or field is an error listing the valid ones."""
    return named_config(CONFIGS, name, "HiFT", **overrides)


def init_shapes(cfg: HiFTConfig):
    model = HiFTGenerator(cfg)
    mel = jnp.zeros((1, 2, cfg.in_channels))
    return jax.eval_shape(lambda: model.init(jax.random.key(0), mel, jax.random.key(1)))["params"]


def param_count(cfg: HiFTConfig) -> int:
    """Parameters as torch counts them (weight norm's g and v apart)."""
    return variants.param_count(HiFTGenerator(cfg), jnp.zeros((1, 2, cfg.in_channels)), jax.random.key(1))


def _flax_leaf(path: tuple[str, ...], name: str, value: np.ndarray):
    name = {"original0": "weight_g", "original1": "weight_v"}.get(name, name)
    if name == "weight_g":
        return name, value.reshape(-1)
    if value.ndim == 2:  # Linear (out, in) -> (in, out)
        return "kernel", value.T
    if value.ndim == 3:  # ConvTranspose1d (in, out, k), Conv1d (out, in, k) -> (k, in, out)
        return name, value.transpose(2, 0, 1) if path[-1].startswith("ups_") else value.transpose(2, 1, 0)
    return name, value


def from_torch(state_dict, cfg: HiFTConfig):
    """Variables of a HiFTGenerator from upstream's state_dict (a released hift.pt: weight norm as
    weight_g / weight_v or as parametrizations.weight.original0 / original1, with or without the
    "generator." prefix of a training checkpoint)."""
    from jaxmodels.nn.state_dict import assign_state_dict, module_path

    def key_map(key, value):
        key = key.removeprefix("generator.").replace(".parametrizations.weight.", ".")
        path, leaf = module_path(key)
        name, value = _flax_leaf(path, leaf, value)
        return (*path, name), value

    return {"params": assign_state_dict(state_dict, nn.unbox(init_shapes(cfg)), key_map)}


def load(path: str, name: str = "hift_cosyvoice_300m"):
    """(model, variables) of a released hift.pt (or .safetensors) of the named configuration."""
    from jaxmodels.nn.state_dict import load_state_dict

    cfg = config(name)
    return HiFTGenerator(cfg), from_torch(load_state_dict(path), cfg)
