"""SenseVoice's rich transcription, as FunASR's SenseVoiceSmall.inference decodes it.

The four prompt frames are decoded with the rest: greedy CTC over every frame (repeats
merged, blanks dropped) gives "<|en|><|NEUTRAL|><|Speech|><|woitn|>the text", the tags
being the language, emotion, event and text-normalisation outputs.
"""

import re

import jax.numpy as jnp

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
