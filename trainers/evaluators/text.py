"""Word and character error rates: edit distances summed over a corpus, over the reference lengths.

WER splits on whitespace; CER compares characters with the spaces removed, the measure of
languages written without spaces (Chinese, Japanese, Cantonese). A corpus of several
languages is scored by each utterance's measure (SenseVoice's evaluation: CER for those
three, WER for the others), summed as one error rate.
"""

CHARACTER_LANGUAGES = ("zh", "ja", "yue")


def edit_distance(reference, hypothesis) -> int:
    """Levenshtein distance between two sequences (substitutions, insertions, deletions cost 1)."""
    row = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hypothesis, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[-1]


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in words, reference length in words)."""
    ref = reference.split()
    return edit_distance(ref, hypothesis.split()), len(ref)


def char_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in characters, reference length), spaces removed."""
    ref = "".join(reference.split())
    return edit_distance(ref, "".join(hypothesis.split())), len(ref)


def error_rates(references, hypotheses, languages=None) -> dict:
    """{"wer": ..., "cer": ...} of a corpus: total edits over total reference length; with
    each utterance's language, also "error_rate": CER for CHARACTER_LANGUAGES, WER otherwise."""
    rates = {}
    for name, errors in (("wer", word_errors), ("cer", char_errors)):
        counts = [errors(r, h) for r, h in zip(references, hypotheses, strict=True)]
        rates[name] = sum(e for e, _ in counts) / max(1, sum(n for _, n in counts))
    if languages is not None:
        counts = [
            (char_errors if lang in CHARACTER_LANGUAGES else word_errors)(r, h)
            for r, h, lang in zip(references, hypotheses, languages, strict=True)
        ]
        rates["error_rate"] = sum(e for e, _ in counts) / max(1, sum(n for _, n in counts))
    return rates
