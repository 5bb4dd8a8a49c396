"""Makes tests/data/cosyvoice_text/: the text ids of CosyVoice's two tokenizers, as upstream's
own code builds them, over a small ranks file made here.

    git clone https://github.com/FunAudioLLM/CosyVoice /tmp/CosyVoice    # read at ace7c47
    pip download openai-whisper==20250625 --no-deps && tar xzf openai_whisper-20250625.tar.gz
    pip install tiktoken torch transformers
    python tests/data/make_cosyvoice_text_reference.py /tmp/CosyVoice openai_whisper-20250625

Both tokenizers read their ranks from an assets/ folder beside their module, by name:
whisper/tokenizer.py's get_encoding("multilingual") (CosyVoice-300M's text ids) and
cosyvoice/tokenizer/tokenizer.py's get_encoding("multilingual_zh_ja_yue_char_del")
(CosyVoice-300M-25Hz's). Each module is copied into a temporary package whose assets/ holds
the ranks made here (every byte, then merges of pairs common in the texts below), and is
run unchanged; openai-whisper's module needs only tiktoken. Written: ranks.tiktoken and
reference.json ({"n_vocab": {"whisper": n, "cosyvoice": n}, "ids": [[tokenizer, text, ids], ...]}).
"""

import base64
import collections
import importlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

TEXTS = [
    "Hello world, it's 2024! Don't stop   now.",
    "你好，世界。今天天气很好。",
    "日本語のテキストと한국어",
    "<|en|>hello there<|endoftext|>",
    "<|HAPPY|> laughing <|Laughter|><|0.02|> and <|30.00|>",
    "<|TTS/SP13|><|SPECIAL_TOKEN_30|> tags",
    "tabs\tand\n\nnew lines  ",
    "ünïcödé ñandú Ærøskøbing",
]


def make_ranks(merges: int = 200) -> dict[bytes, int]:
    """Every byte, then the commonest adjacent pairs of the texts' pieces merged greedily."""
    ranks = {bytes([b]): b for b in range(256)}
    words = [[bytes([b]) for b in t.encode()] for t in " ".join(TEXTS).split(" ")]
    for _ in range(merges):
        pairs = collections.Counter(p for w in words for p in zip(w, w[1:]))
        if not pairs:
            break
        (a, b), _ = pairs.most_common(1)[0]
        ranks[a + b] = len(ranks)
        words = [_merge(w, a, b) for w in words]
    return ranks


def _merge(word, a, b):
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def load_module(source: Path, package: str, name: str, root: Path, ranks_text: str, asset: str):
    """``source`` copied to root/package/name.py with the ranks as assets/asset.tiktoken, imported."""
    folder = root / package
    (folder / "assets").mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").touch()
    shutil.copy(source, folder / f"{name}.py")
    (folder / "assets" / f"{asset}.tiktoken").write_text(ranks_text)
    return importlib.import_module(f"{package}.{name}")


def main():
    cosyvoice, whisper = Path(sys.argv[1]), Path(sys.argv[2])
    out = Path(__file__).parent / "cosyvoice_text"
    out.mkdir(exist_ok=True)
    ranks = make_ranks()
    ranks_text = "".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items())
    (out / "ranks.tiktoken").write_text(ranks_text)

    root = Path(tempfile.mkdtemp())
    sys.path.insert(0, str(root))
    whisper_tok = load_module(
        whisper / "whisper" / "tokenizer.py", "whisper", "tokenizer", root, ranks_text, "multilingual"
    )
    cosy_tok = load_module(
        cosyvoice / "cosyvoice" / "tokenizer" / "tokenizer.py",
        "cosyvoice_tokenizer",
        "tokenizer",
        root,
        ranks_text,
        "multilingual_zh_ja_yue_char_del",
    )
    encodings = {
        # as CosyVoice-300M's conf calls them: multilingual, 100 languages, the frontend's allowed_special 'all'
        "whisper": whisper_tok.get_tokenizer(True, num_languages=100, language="en", task="transcribe").encoding,
        "cosyvoice": cosy_tok.get_tokenizer(True, num_languages=100, language="en", task="transcribe").encoding,
    }
    reference = {
        name: {"n_vocab": enc.n_vocab, "ids": [[t, enc.encode(t, allowed_special="all")] for t in TEXTS]}
        for name, enc in encodings.items()
    }
    lines = ",\n".join(
        f"  [{json.dumps(name)}, {json.dumps(t, ensure_ascii=False)}, {ids}]"
        for name, r in reference.items()
        for t, ids in r["ids"]
    )
    n_vocab = json.dumps({name: r["n_vocab"] for name, r in reference.items()})
    (out / "reference.json").write_text(f'{{"n_vocab": {n_vocab},\n "ids": [\n{lines}\n ]}}\n')
    print({k: v["n_vocab"] for k, v in reference.items()}, len(ranks), "ranks")


if __name__ == "__main__":
    main()
