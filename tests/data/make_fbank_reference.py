"""Writes tests/data/fbank_reference.npz: torchaudio's Kaldi fbank as FunASR's WavFrontend
calls it for SenseVoice (16 kHz, Hamming window, 80 mel bins, 25 ms frames every 10 ms,
energy floor 0, the waveform scaled by 32768, dither 0 so that it is reproducible) on the
waveforms below: a chirp, white noise and bursts of noise in near silence.

    python tests/data/make_fbank_reference.py       # needs torch and torchaudio
"""

import os

import numpy as np

SAMPLE_RATE = 16000


def waveforms() -> dict:
    """The test signals, float32 in [-1, 1], of lengths that leave part of a frame over."""
    rng = np.random.default_rng(0)
    t = np.arange(8000 + 77) / SAMPLE_RATE
    bursts = 0.001 * rng.standard_normal(len(t))
    bursts[2000:4000] += 0.3 * rng.standard_normal(2000)
    return {
        "chirp": (0.5 * np.sin(2 * np.pi * (100 + 3000 * t) * t)).astype(np.float32),
        "noise": (0.1 * rng.standard_normal(len(t))).astype(np.float32),
        "bursts": bursts.astype(np.float32),
    }


def main():
    import torch
    import torchaudio

    out = {}
    for name, wave in waveforms().items():
        feats = torchaudio.compliance.kaldi.fbank(
            torch.from_numpy(wave[None] * 32768.0),
            num_mel_bins=80,
            frame_length=25,
            frame_shift=10,
            dither=0.0,
            energy_floor=0.0,
            window_type="hamming",
            sample_frequency=SAMPLE_RATE,
        )
        out[name] = feats.numpy()
    np.savez_compressed(os.path.join(os.path.dirname(__file__), "fbank_reference.npz"), **out)


if __name__ == "__main__":
    main()
