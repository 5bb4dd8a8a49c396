"""SenseVoice's rich transcription, as FunASR's SenseVoiceSmall.inference decodes it.

The four prompt frames are decoded with the rest: greedy CTC over every frame (repeats
merged, blanks dropped) gives "<|en|><|NEUTRAL|><|Speech|><|woitn|>the text", the tags
being the language, emotion, event and text-normalisation outputs.
"""

import itertools
import re

import jax.numpy as jnp
import numpy as np

from jaxmodels.ctc import greedy_decode, paddings_from_lengths

LANGUAGES = ("zh", "en", "yue", "ja", "ko", "nospeech")
EMOTIONS = ("HAPPY", "SAD", "ANGRY", "NEUTRAL", "FEARFUL", "DISGUSTED", "SURPRISED", "EMO_UNKNOWN")
EVENTS = ("BGM", "Speech", "Applause", "Laughter", "Cry", "Sneeze", "Breath", "Cough", "Event_UNK")
TEXTNORMS = ("withitn", "woitn")
_FIELDS = {"language": LANGUAGES, "emotion": EMOTIONS, "event": EVENTS, "textnorm": TEXTNORMS}
_TAG = re.compile(r"<\|([^|]+)\|>")


def rich_greedy(logits, lengths, banned: int | None = None):
    """(labels (B, T), label_paddings (B, T)) of the model's output over all its frames,
    prompts included; ``banned`` (ban_emo_unk: the id of <|EMO_UNKNOWN|>) is never chosen."""
    if banned is not None:
        logits = logits.at[..., banned].set(-jnp.inf)
    return greedy_decode(logits, paddings_from_lengths(lengths, logits.shape[1]))


def parse_rich(text: str) -> dict:
    """{"language", "emotion", "event", "textnorm", "text"} of one decoded utterance: each
    field from the leading tags of its kind ("" where none was emitted), the text after them."""
    fields = dict.fromkeys(_FIELDS, "")
    while match := _TAG.match(text):
        kind = next((k for k, names in _FIELDS.items() if match[1] in names and not fields[k]), None)
        if kind is None:
            break
        fields[kind], text = match[1], text[match.end() :]
    return {**fields, "text": text.strip()}


def ctc_viterbi(log_probs, targets, blank: int = 0, blank_frames=None) -> np.ndarray:
    """The best CTC path of ``targets`` through (T, V) log-probabilities (numpy, or a device
    array of which only the targets' columns are read): each frame's label or blank, as
    FunASR's ctc_forced_align picks it in float32 (ties go to staying, then to the state
    before; at the end to the last label rather than the final blank). ``blank_frames`` (T,)
    bool: frames whose blank log-probability counts as 0."""
    states = np.full(2 * len(targets) + 1, blank)
    states[1::2] = targets
    emit = np.array(log_probs[:, states], np.float32)
    if blank_frames is not None:
        emit[np.ix_(np.asarray(blank_frames), states == blank)] = 0.0
    skip = np.zeros(len(states), bool)
    skip[2:] = states[2:] != states[:-2]
    none = np.full(2, -np.inf, np.float32)
    best = np.concatenate([emit[0, :2], np.full(len(states) - 2, -np.inf, np.float32)])
    back = np.zeros(emit.shape, np.int64)
    for t in range(1, len(emit)):
        prev = np.stack(
            [best, np.concatenate([none[:1], best[:-1]]), np.where(skip, np.concatenate([none, best[:-2]]), -np.inf)]
        )
        back[t] = np.argmax(prev, axis=0)
        best = emit[t] + np.max(prev, axis=0)
    path = np.zeros(len(emit), np.int64)
    last = len(states) - 2
    path[-1] = last + int(np.argmax(best[last:]))
    for t in range(len(emit) - 1, 0, -1):
        path[t - 1] = path[t] - back[t, path[t]]
    return states[path]


def funasr_timestamps(log_probs: np.ndarray, text: str, processor, frame_ms: int = 60) -> tuple[list, list]:
    """([[start_ms, end_ms], ...], words) of one utterance as FunASR's SenseVoiceSmall.inference
    gives them with output_timestamp: the decoded rich text split into SentencePiece pieces
    again, the first four dropped (the tags), each piece encoded again as text for the ids to
    align; the CTC log-probabilities (T, V) past the four prompt frames, blank made certain
    where it is the best label, force-aligned; each label's run of frames from frame_ms * n -
    frame_ms / 2; pieces joined into words as FunASR's post (a piece starting with "▁" starts
    a word, ASCII letters continue one, anything else stands alone). Where the pieces encode
    to more ids than pieces, labels past the last piece are named "" (FunASR fails there:
    its issue 2637, whose workaround this is)."""
    pieces = processor.encode(text, out_type=str)[4:]
    ids = []
    for again in processor.encode(pieces):
        ids.extend(again or [124])  # FunASR's id for a piece that encodes to nothing
    if not ids:
        return [], []
    log_probs = log_probs[4:]
    frames = len(log_probs)
    spans, start, k = [], 0, 0
    for label, run in itertools.groupby(ctc_viterbi(log_probs, ids, blank_frames=log_probs.argmax(-1) == 0)):
        end = start + len(list(run))
        if label != 0:
            left = max((start * frame_ms - frame_ms / 2) / 1000, 0)
            right = min((end * frame_ms - frame_ms / 2) / 1000, (frames * frame_ms - frame_ms / 2) / 1000)
            spans.append((pieces[k] if k < len(pieces) else "", int(left * 1000), int(right * 1000)))
            k += 1
        start = end
    times, words = [], []
    for i, (piece, left, right) in enumerate(spans):
        if piece == "▁":
            continue
        if i > 0 and piece.startswith("▁"):
            piece = piece[1:]
        elif i > 0 and words and _ascii_word(words[-1]) and _ascii_word(piece):
            words[-1] += piece
            times[-1][1] = right
            continue
        times.append([left, right])
        words.append(piece)
    return times, words


def _ascii_word(s: str) -> bool:
    return s.isalpha() and s.isascii()
