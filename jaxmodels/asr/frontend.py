"""Speech front end in JAX, batched: Kaldi-compatible log-mel filterbank, low-frame-rate
stacking, CMVN and SpecAugment, as SenseVoice's (FunASR's WavFrontend + SpecAugLFR), and
a band-limit and noise augmentation of the waveform.

Waveforms are (B, N) float in [-1, 1] with lengths (B,); features (B, T, D) with lengths.
The filterbank follows Kaldi's compute-fbank-feats (as torchaudio.compliance.kaldi.fbank
implements it): 25 ms Hamming frames every 10 ms with snip_edges, DC offset removed,
pre-emphasis 0.97, a 512-point power spectrum, triangular filters on Kaldi's mel scale
from 20 Hz to Nyquist, log with float32 epsilon as the floor. FunASR scales the waveform
to 16-bit range first, and so does `fbank`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

EPSILON = float(np.finfo(np.float32).eps)


def _mel(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, np.float64) / 700.0)


def _zero_padding(feats, lengths):
    """(B, T, D) features with the frames at or past each utterance's length set to 0."""
    valid = jnp.arange(feats.shape[1])[None] < lengths[:, None]
    return jnp.where(valid[..., None], feats, 0.0)


def mel_banks(num_bins: int, fft_size: int, sample_rate: int, low_freq: float = 20.0, high_freq: float = 0.0):
    """Kaldi's triangular mel filters, (fft_size // 2 + 1, num_bins); high_freq <= 0 is
    relative to Nyquist."""
    nyquist = sample_rate / 2
    high = nyquist + high_freq if high_freq <= 0 else high_freq
    if not 0 <= low_freq < high <= nyquist:
        raise ValueError(f"need 0 <= low_freq < high_freq <= {nyquist}, got {low_freq}, {high}")
    mel_low, mel_high = _mel(low_freq), _mel(high)
    delta = (mel_high - mel_low) / (num_bins + 1)
    left = mel_low + delta * np.arange(num_bins)[:, None]
    center, right = left + delta, left + 2 * delta
    mel = _mel(sample_rate / fft_size * np.arange(fft_size // 2))[None]
    up, down = (mel - left) / (center - left), (right - mel) / (right - center)
    banks = np.maximum(0.0, np.minimum(up, down))  # Kaldi leaves the Nyquist bin out
    return np.pad(banks, ((0, 0), (0, 1))).T.astype(np.float32)


def fbank(
    waveform,
    lengths,
    sample_rate: int = 16000,
    num_mel_bins: int = 80,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    dither: float = 0.0,
    key=None,
    window: str = "hamming",
    scale: float = 32768.0,
):
    """Log-mel filterbank (B, T, num_mel_bins) and frame counts (B,). ``window``: "hamming"
    (FunASR's) or "povey" (Kaldi's default, a Hann window to the power 0.85); the waveform is
    multiplied by ``scale`` first (FunASR's 16-bit range; 1.0 leaves it as it is)."""
    if window not in ("hamming", "povey"):
        raise ValueError(f"fbank window: 'hamming' or 'povey', not {window!r}")
    size = int(sample_rate * frame_length_ms / 1000)
    shift = int(sample_rate * frame_shift_ms / 1000)
    fft_size = 1 << (size - 1).bit_length()
    batch, samples = waveform.shape
    if samples < size:
        raise ValueError(f"waveforms of {samples} samples are shorter than one {frame_length_ms} ms frame")
    frames = 1 + (samples - size) // shift
    index = np.arange(frames)[:, None] * shift + np.arange(size)[None]
    x = waveform.astype(jnp.float32)[:, index] * scale  # (B, T, window)
    if dither > 0.0:
        x = x + dither * jax.random.normal(key, x.shape)
    x = x - jnp.mean(x, axis=-1, keepdims=True)
    x = x - 0.97 * jnp.concatenate([x[..., :1], x[..., :-1]], axis=-1)
    phase = 2 * np.pi * np.arange(size) / (size - 1)
    taper = 0.54 - 0.46 * np.cos(phase) if window == "hamming" else (0.5 - 0.5 * np.cos(phase)) ** 0.85
    x = x * taper.astype(np.float32)
    power = jnp.abs(jnp.fft.rfft(x, n=fft_size, axis=-1)) ** 2
    energies = power @ mel_banks(num_mel_bins, fft_size, sample_rate)
    feats = jnp.log(jnp.maximum(energies, EPSILON))
    num_frames = jnp.maximum(0, 1 + (lengths - size) // shift)
    return _zero_padding(feats, num_frames), num_frames


def mfcc(waveform, lengths, num_ceps: int = 13, num_mel_bins: int = 23, lifter: float = 22.0, deltas: bool = True):
    """Kaldi's MFCC of `fbank`'s frames (23 mel bins, the orthonormal DCT-II's first 13
    cepstra, lifter 22, no energy), with the deltas and delta-deltas of torchaudio's
    compute_deltas (window 5, edges repeated): (B, T, 39) as HuBERT's first iteration
    clusters them (fairseq's dump_mfcc_feature), and frame counts (B,)."""
    feats, frames = fbank(waveform, lengths, num_mel_bins=num_mel_bins)
    n, k = np.arange(num_mel_bins), np.arange(num_ceps)[:, None]
    dct = np.sqrt(np.where(k == 0, 1.0, 2.0) / num_mel_bins) * np.cos(np.pi / num_mel_bins * (n + 0.5) * k)
    lift = 1.0 + 0.5 * lifter * np.sin(np.pi * np.arange(num_ceps) / lifter)
    ceps = feats @ (dct.T * lift).astype(np.float32)
    if deltas:
        first = _deltas(ceps)
        ceps = jnp.concatenate([ceps, first, _deltas(first)], axis=-1)
    return _zero_padding(ceps, frames), frames


def _deltas(x):
    padded = jnp.pad(x, ((0, 0), (2, 2), (0, 0)), mode="edge")
    t = x.shape[1]
    return (2 * (padded[:, 4 : 4 + t] - padded[:, :t]) + padded[:, 3 : 3 + t] - padded[:, 1 : 1 + t]) / 10.0


def low_frame_rate(feats, lengths, lfr_m: int = 7, lfr_n: int = 6):
    """Stack lfr_m frames every lfr_n (SenseVoice: 7 and 6, 10 ms -> 60 ms), the first
    frame repeated (lfr_m - 1) // 2 times on the left and the last frame on the right, as
    FunASR's apply_lfr. (B, T, D) -> (B, ceil(T / lfr_n), lfr_m * D)."""
    batch, frames, dim = feats.shape
    out_frames = -(-frames // lfr_n)
    index = np.arange(out_frames)[:, None] * lfr_n + np.arange(lfr_m)[None] - (lfr_m - 1) // 2
    index = jnp.clip(index[None], 0, jnp.maximum(lengths, 1)[:, None, None] - 1)  # (B, T', m)
    stacked = jnp.take_along_axis(feats, index.reshape(batch, -1)[..., None], axis=1)
    out_lengths = -(-lengths // lfr_n)
    stacked = stacked.reshape(batch, out_frames, lfr_m * dim)
    return _zero_padding(stacked, out_lengths), out_lengths


def read_am_mvn(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, inverse_std) from FunASR's am.mvn: a Kaldi nnet in text form whose <AddShift>
    row holds -mean and <Rescale> row 1/std (each "<LearnRateCoef> 0 [ values ]", on the
    line after its tag), applied as (x + shift) * scale after the low frame rate."""
    with open(path) as f:
        lines = [line.split() for line in f]
    rows = {}
    for tag, values in zip(lines, lines[1:]):
        if tag[:1] in (["<AddShift>"], ["<Rescale>"]):
            if values[:1] != ["<LearnRateCoef>"] or "[" not in values or values[-1] != "]":
                raise ValueError(f"{path}: the row after {tag[0]} is not '<LearnRateCoef> 0 [ values ]'")
            rows[tag[0]] = np.asarray(values[values.index("[") + 1 : -1], np.float32)
    missing = [t for t in ("<AddShift>", "<Rescale>") if t not in rows]
    if missing or rows["<AddShift>"].shape != rows["<Rescale>"].shape:
        raise ValueError(f"{path}: not an am.mvn (missing {missing} or rows of different widths)")
    return -rows["<AddShift>"], rows["<Rescale>"]


def apply_cmvn(feats, lengths, mean, inverse_std):
    """Global mean and variance normalisation, padding left at zero."""
    return _zero_padding((feats - mean) * inverse_std, lengths)


def spec_augment(
    key,
    feats,
    lengths,
    num_freq_masks: int = 1,
    freq_mask_width: int = 30,
    num_time_masks: int = 1,
    time_mask_width: int = 12,
    stacked_frames: int = 1,
):
    """SpecAugment (Park et al., 2019) without time warping: frequency bands and time
    spans set to zero, widths uniform in [0, max). With stacked (low-frame-rate)
    features, the same mel bins are masked in each of the `stacked_frames` sub-frames,
    as FunASR's SpecAugLFR."""
    batch, frames, dim = feats.shape
    bins = dim // stacked_frames
    keys = jax.random.split(key, 4)
    bin_index = jnp.arange(dim) % bins
    keep = jnp.ones((batch, frames, dim), bool)
    widths = jax.random.randint(keys[0], (batch, num_freq_masks), 0, freq_mask_width)
    starts = (jax.random.uniform(keys[1], (batch, num_freq_masks)) * (bins - widths)).astype(jnp.int32)
    for i in range(num_freq_masks):
        band = (bin_index[None] >= starts[:, i, None]) & (bin_index[None] < (starts + widths)[:, i, None])
        keep &= ~band[:, None, :]
    widths = jax.random.randint(keys[2], (batch, num_time_masks), 0, time_mask_width)
    room = jnp.maximum(lengths[:, None] - widths, 0)
    starts = (jax.random.uniform(keys[3], (batch, num_time_masks)) * room).astype(jnp.int32)
    t = jnp.arange(frames)[None]
    for i in range(num_time_masks):
        span = (t >= starts[:, i, None]) & (t < (starts + widths)[:, i, None])
        keep &= ~span[:, :, None]
    return jnp.where(keep, feats, 0.0)


def degrade(
    key, waveform, lengths, prob: float, lowpass_hz=(2000.0, 8000.0), snr_db=(5.0, 40.0), sample_rate: int = 16000
):
    """Channel augmentation of a training batch: each utterance, with probability `prob`, is
    low-passed at a cutoff uniform in `lowpass_hz` (a brick wall on its spectrum), and,
    independently with probability `prob`, gets white noise at an SNR uniform in `snr_db`
    (relative to its own power). Teaches a recogniser that speech band-limited or noisy,
    as a codec or a telephone leaves it, is still speech; padding stays zero."""
    batch, samples = waveform.shape
    keys = jax.random.split(key, 5)
    x = waveform.astype(jnp.float32)
    cutoff = jax.random.uniform(keys[0], (batch, 1), minval=lowpass_hz[0], maxval=lowpass_hz[1])
    freqs = np.fft.rfftfreq(samples, 1 / sample_rate)[None]
    lowpassed = jnp.fft.irfft(jnp.fft.rfft(x, axis=-1) * (freqs <= cutoff), n=samples, axis=-1)
    x = jnp.where(jax.random.uniform(keys[1], (batch, 1)) < prob, lowpassed, x)
    valid = jnp.arange(samples)[None] < lengths[:, None]
    power = jnp.sum(jnp.square(x) * valid, -1, keepdims=True) / jnp.maximum(lengths[:, None], 1)
    snr = jax.random.uniform(keys[2], (batch, 1), minval=snr_db[0], maxval=snr_db[1])
    noise = jax.random.normal(keys[3], x.shape) * jnp.sqrt(power / 10 ** (snr / 10))
    x = x + noise * (jax.random.uniform(keys[4], (batch, 1)) < prob)
    return jnp.where(valid, x, 0.0).astype(waveform.dtype)


def num_output_frames(samples: int, sample_rate: int = 16000, lfr_n: int = 6) -> int:
    """Encoder frames for a waveform of `samples` samples (10 ms fbank, then LFR)."""
    window, shift = sample_rate * 25 // 1000, sample_rate * 10 // 1000
    return math.ceil(max(0, 1 + (samples - window) // shift) / lfr_n)
