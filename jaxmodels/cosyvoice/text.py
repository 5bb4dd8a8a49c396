"""CosyVoice's text tokens: the byte-pair encodings its LMs were trained on.

CosyVoice 2 reads Qwen2's (its released CosyVoice-BlankEN/tokenizer.json) with the special
tokens its CosyVoice2Tokenizer adds (breath, laughter and the like), through the `tokenizers`
package: `load` takes that file or its folder too.

CosyVoice-300M encodes text with Whisper's multilingual tokenizer (`multilingual.tiktoken`
of the openai-whisper package, 100 languages: 51,866 ids, the released llm.pt's
text_token_size); CosyVoice-300M-25Hz with CosyVoice's own ranks
(`multilingual_zh_ja_yue_char_del.tiktoken` in cosyvoice/tokenizer/assets), whose special
tokens add audio events, emotions and ASR and TTS tags. Both are tiktoken encodings of
Whisper's pre-tokenising pattern, and upstream's frontend encodes with every special token
allowed. The special tokens follow the ranks in the order below (whisper/tokenizer.py and
cosyvoice/tokenizer/tokenizer.py).

    tokenizer = text.load("multilingual.tiktoken")
    ids = text.encode(tokenizer, "Hello <|en|> world")
"""

import base64
import os
import re
import unicodedata

# Whisper's languages in its order; the special tokens take the first num_languages.
LANGUAGES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr bg lt la "
    "mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn yo so af oc ka be "
    "tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su yue"
).split()
# What CosyVoice's own ranks add after the languages.
AUDIO_EVENTS = "ASR AED SER Speech /Speech BGM /BGM Laughter /Laughter Applause /Applause".split()
EMOTIONS = "HAPPY SAD ANGRY NEUTRAL".split()
TTS_TAGS = [*"TTS/B TTS/O TTS/Q TTS/A TTS/CO TTS/CL TTS/H".split(), *(f"TTS/SP{i:02d}" for i in range(1, 14))]
COSYVOICE_RANKS = "multilingual_zh_ja_yue_char_del"  # the file name upstream selects the extended tokens by
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def special_tokens(cosyvoice: bool, num_languages: int = 100) -> list[str]:
    """The special tokens in id order: Whisper's, or with ``cosyvoice`` CosyVoice's."""
    languages = [f"<|{code}|>" for code in LANGUAGES[:num_languages]]
    tasks = ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
    timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    if not cosyvoice:
        return ["<|endoftext|>", "<|startoftranscript|>", *languages, *tasks, *timestamps]
    tags = [f"<|{t}|>" for t in (*AUDIO_EVENTS, *EMOTIONS)]
    asr = [f"<|SPECIAL_TOKEN_{i}|>" for i in range(1, 31)]
    tts = [f"<|{t}|>" for t in TTS_TAGS]
    return ["<|endoftext|>", "<|startoftranscript|>", *languages, *tags, *tasks, *asr, *tts, *timestamps]


# What CosyVoice2Tokenizer adds to Qwen2's tokenizer (cosyvoice/tokenizer/tokenizer.py), in order.
COSYVOICE2_SPECIALS = (
    "<|endoftext|> <|im_start|> <|im_end|> <|endofprompt|> [breath] <strong> </strong> [noise] [laughter] "
    "[cough] [clucking] [accent] [quick_breath] <laughter> </laughter> [hissing] [sigh] [vocalized-noise] "
    "[lipsmack] [mn]"
).split()


class Utf8Bytes:
    """Text as its UTF-8 bytes, ids 0-255 (LMs trained here on a corpus of their own), used as
    a tiktoken encoding is: encode, decode, n_vocab."""

    n_vocab = 256

    def encode(self, sentence: str, allowed_special="all") -> list[int]:
        return list(sentence.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(list(ids)).decode("utf-8", errors="replace")


class Qwen2Text:
    """Qwen2's byte-level BPE (a tokenizer.json) with CosyVoice 2's special tokens added as
    transformers adds them (new ones after the vocabulary, in order), as a tiktoken encoding
    is used here: encode, decode, n_vocab."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(path)
        self.tokenizer.add_special_tokens(list(COSYVOICE2_SPECIALS))
        self.n_vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, sentence: str, allowed_special="all") -> list[int]:
        return self.tokenizer.encode(sentence).ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


def load(path: str, num_languages: int = 100):
    """The text tokenizer of a ``.tiktoken`` ranks file (base64 token, rank per line): a tiktoken
    encoding, with CosyVoice's special tokens when the file is its multilingual_zh_ja_yue_char_del
    ranks; or of Qwen2's tokenizer.json (the file or its folder): a Qwen2Text; "bytes": UTF-8 bytes."""
    if path == "bytes":
        return Utf8Bytes()
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"text tokenizer not found: {path}")
    if path.endswith(".json"):
        return Qwen2Text(path)
    import tiktoken

    ranks = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
            except ValueError:
                raise ValueError(
                    f"{path}:{number}: not a tiktoken ranks line (base64 token, rank): {line!r}"
                ) from None
    name = os.path.basename(path).removesuffix(".tiktoken")
    specials = special_tokens(name == COSYVOICE_RANKS, num_languages)
    return tiktoken.Encoding(
        name=name,
        explicit_n_vocab=len(ranks) + len(specials),
        pat_str=PATTERN,
        mergeable_ranks=ranks,
        special_tokens={token: len(ranks) + i for i, token in enumerate(specials)},
    )


def encode(tokenizer, text: str) -> list[int]:
    """Text ids as upstream's frontend makes them (every special token allowed)."""
    return tokenizer.encode(text, allowed_special="all")


# The text frontend upstream runs where neither ttsfrd nor wetext is installed
# (CosyVoiceFrontEnd.text_normalize and cosyvoice/utils/frontend_utils.py).
CHINESE = re.compile(r"[\u4e00-\u9fff]+")
SENTENCE_ENDS = {"zh": "。？！；：、.?!;", "en": ".?!;:"}


def normalize(tokenizer, text: str, split: bool = True):
    """CosyVoice's text frontend: Arabic numerals spelt out in English (inflect's words); in
    text with Chinese characters blanks between them dropped, ² and ³ read, brackets removed,
    . as 。 and a trailing comma as 。; then, with `split`, the pieces it speaks one at a time
    (split_paragraph: sentences joined up to 80 ids, or 80 characters in Chinese, a short last
    one joined to the one before; pieces of punctuation alone dropped), else the whole text.
    Text holding a special token (<|...|>) is left as it is."""
    if text == "" or ("<|" in text and "|>" in text):
        return [text] if split else text
    text = text.strip()
    if CHINESE.search(text):
        lang = "zh"
        text = _drop_blanks(text.replace("\n", "")).replace("²", "平方").replace("³", "立方")
        text = text.replace(".", "。").replace(" - ", "，")
        for bracket in ("（", "）", "【", "】", "`"):
            text = text.replace(bracket, "")
        text = re.sub(r"[，,、]+$", "。", text.replace("——", " "))
    else:
        lang = "en"
        text = _spell_numbers(text)
    if not split:
        return text
    pieces = _split_paragraph(text, lang, lambda t: len(t) if lang == "zh" else len(encode(tokenizer, t)))
    return [p for p in pieces if not all(unicodedata.category(c)[0] in "PS" for c in p)]


def _drop_blanks(text: str) -> str:
    """Blanks kept only between two ASCII characters that are not blanks."""
    keep = lambda i: 0 <= i < len(text) and text[i].isascii() and text[i] != " "  # noqa: E731
    return "".join(c for i, c in enumerate(text) if c != " " or (keep(i - 1) and keep(i + 1)))


def _spell_numbers(text: str) -> str:
    """Each run of digits as inflect's words ("1,250" -> "one,two hundred and fifty")."""
    import inflect

    engine = inflect.engine()
    return re.sub(r"\d+", lambda m: engine.number_to_words(m.group()), text)


def _split_paragraph(text: str, lang: str, length, max_len: int = 80, min_len: int = 60, merge_len: int = 20):
    """Sentences (ended by `lang`'s marks, a closing quote after the mark kept with them; a
    final mark added where the text has none) joined into pieces: one is closed when adding the
    next sentence would pass `max_len` and it holds more than `min_len`; a last piece under
    `merge_len` joins the one before."""
    ends = SENTENCE_ENDS[lang]
    if text[-1] not in ends:
        text += "。" if lang == "zh" else "."
    sentences, start = [], 0
    for i, c in enumerate(text):
        if c not in ends:
            continue
        if text[start:i]:
            sentences.append(text[start:i] + c)
        if i + 1 < len(text) and text[i + 1] in '"”':
            sentences.append(sentences.pop() + text[i + 1])
            start = i + 2
        else:
            start = i + 1
    pieces, current = [], ""
    for sentence in sentences:
        if length(current + sentence) > max_len and length(current) > min_len:
            pieces.append(current)
            current = ""
        current += sentence
    if current:
        if length(current) < merge_len and pieces:
            pieces[-1] += current
        else:
            pieces.append(current)
    return pieces
