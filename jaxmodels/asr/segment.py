"""Long audio cut into pieces a recogniser takes whole: an energy voice-activity detector.

As FunASR runs SenseVoice on long audio (fsmn-vad, then merge_vad): speech regions are
found, then merged into contiguous pieces of at most ``max_seconds`` that keep the
silences between them; a region longer than that is cut at its quietest 10 ms frame.
The detector here is energy against the recording's own levels, not FSMN-VAD.
"""

import numpy as np

HOP = 0.01  # seconds per energy frame


def frame_energy(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Log energy (dB) of each 10 ms frame."""
    hop = int(HOP * sample_rate)
    frames = len(audio) // hop
    power = np.mean(np.reshape(audio[: frames * hop], (frames, hop)).astype(np.float64) ** 2, axis=1)
    return 10 * np.log10(power + 1e-10)


def speech_regions(energy: np.ndarray, margin_db: float = 35.0, min_gap: int = 30) -> list[tuple[int, int]]:
    """[start, end) frame ranges whose energy is within ``margin_db`` of the loud frames (the
    98th percentile); gaps shorter than ``min_gap`` frames are bridged."""
    if len(energy) == 0:
        return []
    loud = energy > np.percentile(energy, 98) - margin_db
    regions, start = [], None
    for i, on in enumerate(np.append(loud, False)):
        if on and start is None:
            start = i
        elif not on and start is not None:
            if regions and start - regions[-1][1] < min_gap:
                start = regions.pop()[0]
            regions.append((start, i))
            start = None
    return regions


def segments(audio: np.ndarray, sample_rate: int, max_seconds: float) -> list[tuple[int, int]]:
    """[start, end) sample ranges covering ``audio`` in order, none longer than ``max_seconds``,
    cut in the silences between speech regions (or, inside a long region, at its quietest frame)."""
    hop, most = int(HOP * sample_rate), int(max_seconds * sample_rate)
    limit = most // hop  # frames
    energy = frame_energy(audio, sample_rate)
    # Candidate cuts: the middle of each silence between speech regions.
    regions = speech_regions(energy)
    cuts = [(a[1] + b[0]) // 2 for a, b in zip(regions, regions[1:])]
    pieces, start = [], 0
    while len(audio) - start * hop > most:
        inside = [c for c in cuts if start < c <= start + limit]
        if inside:
            end = inside[-1]
        else:  # one region longer than the limit: its quietest frame in the second half of the window
            end = start + limit // 2 + int(np.argmin(energy[start + limit // 2 : start + limit]))
        pieces.append((start * hop, end * hop))
        start = end
    return pieces + [(start * hop, len(audio))]
