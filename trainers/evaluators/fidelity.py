"""Codec fidelity: how close decoded audio is to the original, and how many bits its codes carry.

SI-SNR (dB, higher is better) and AudioCraft's mel distance (L1 between log10 mel spectra,
n_fft 1024, hop 256, over the frames that cover real audio) per utterance, in JAX so that
they run sharded inside a task's eval step; the entropy bitrate of each codebook's codes
over a whole split, on the host.
"""

import math

import jax.numpy as jnp
import numpy as np

from jaxmodels.codec import losses

MEL_N_FFT, MEL_HOP = 1024, 256


def _within(lengths, size: int):
    """(B, size) 1.0 where a position is before its row's length."""
    return (jnp.arange(size)[None] < lengths[:, None]).astype(jnp.float32)


def si_snr(decoded, audio, lengths):
    """(B,) SI-SNR of mono waveforms (B, T), padding past each length left out."""
    return losses.si_snr(decoded[..., None], audio[..., None], _within(lengths, audio.shape[1]))


def mel_distances(decoded: dict, audio, lengths, sample_rate: int, n_mels: int, f_min: float) -> dict:
    """{name: (B,) mean |log10 mel(decoded[name]) - log10 mel(audio)|} over the ceil(length / hop)
    frames of each utterance; the original's spectrogram is computed once for every decoding."""
    valid = _within(lengths, audio.shape[1])

    def mel(a):
        return losses.mel_spectrogram(
            (a * valid)[..., None], sample_rate, MEL_N_FFT, MEL_HOP, MEL_N_FFT, n_mels, f_min
        )[:, 0]

    reference = mel(audio)
    frames = _within(-(-lengths // MEL_HOP), reference.shape[1])
    out = {}
    for name, y in decoded.items():
        distance = jnp.mean(jnp.abs(mel(y) - reference), axis=-1)
        out[name] = jnp.sum(distance * frames, 1) / jnp.maximum(jnp.sum(frames, 1), 1)
    return out


def codebook_entropies(codes, frames, bins: int) -> list[float]:
    """Entropy in bits of each codebook's code distribution over a split: the bits per frame an
    entropy coder would need (log2(bins) without one). codes (N, K, F), frames (N,) valid per row."""
    keep = np.arange(codes.shape[2])[None] < frames[:, None]
    entropies = []
    for k in range(codes.shape[1]):
        counts = np.bincount(codes[:, k][keep], minlength=bins).astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        entropies.append(float(-(p * np.log2(p)).sum()))
    return entropies


def bitrates(entropies, quantizers: int, bins: int, frame_rate: float) -> dict:
    """The nominal and the entropy-coded bitrate (kbps) of the first ``quantizers`` codebooks."""
    return {
        "bitrate": quantizers * math.log2(bins) * frame_rate / 1000,
        "entropy_bitrate": sum(entropies[:quantizers]) * frame_rate / 1000,
    }
