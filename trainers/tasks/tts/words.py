"""Word alignment (VALL-E R): which word each text token and each group of codes belongs to."""

from __future__ import annotations

import numpy as np

from jaxmodels.speechlm import text_words


def word_frames(record, rate: float, frames: int):
    """The frame (at `rate` per second) at which each word of the record's transcript begins (the
    first at 0, each after the one before), from its word_starts; `frames` the utterance's."""
    starts = record.get("word_starts")
    if starts is None or len(starts) != len(record["target"].split()):
        raise ValueError(
            f"record {record.get('key', record['source'])}: word alignment needs "
            f"word_starts, the time (s) each word of the transcript begins"
            + (
                " (a built-in corpus made before they were written has none: delete its folder to synthesise it again)"
                if starts is None
                else f", one per word, not {len(starts)}"
            )
        )
    out = np.round(np.asarray(starts, np.float64) * rate).astype(np.int32)
    out[0] = 0
    for k in range(1, len(out)):
        out[k] = max(out[k], out[k - 1] + 1)
    return np.minimum(out, max(frames - 1, 0))  # words past the audio's end: a record too short to matter


def frame_words(starts, frames: int):
    """(frames,) the word each frame belongs to, given the frame each word begins at (word_frames)."""
    return (np.searchsorted(starts, np.arange(frames), side="right") - 1).astype(np.int32)


def position_words(size: int, prompt: int, frames: int, starts, offset: int = 0):
    """(size,) what each LM position is told: -1 on the prompt's `prompt` positions, then the word
    (counted from `offset`) of each of the utterance's `frames`, given where each word begins
    (word_frames), one past its last word at the position after them (where the end is due); -1 beyond."""
    told = np.full(size, -1, np.int32)
    told[prompt : prompt + frames] = offset + frame_words(starts, frames)
    told[prompt + frames] = offset + len(starts)
    return told


class WordAlignment:
    """The word alignment of a TTSTask's examples (model.args.word_alignment)."""

    def _word_groups(self, record, groups):
        """The group of codes at which each word of the record's transcript begins."""
        c = self.codec.config
        return word_frames(record, c.sample_rate / c.hop_length / self.models["ar"].group_size, groups)

    def _words(self, record):
        """text_words and audio_words (per AR position: the word of the group it predicts; -1 on
        the prompt; one past the last word where EOS is due) of an example."""
        t, g = self.cfg.tts, self.models["ar"].group_size
        words = np.full(t.max_text_length, -1, np.int32)
        words[: len(record["text_ids"])] = text_words(record["text_ids"])
        prompt = record.get("prompt_frames", 0) // g
        target = len(record["codes"]) // g - prompt
        audio = position_words(
            t.max_frames // g + 1, prompt, target, record["word_groups"], record.get("prompt_words", 0)
        )
        return {"text_words": words, "audio_words": audio}
