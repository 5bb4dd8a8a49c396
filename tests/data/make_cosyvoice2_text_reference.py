"""Makes tests/data/cosyvoice_text/qwen2/: a small Qwen2 tokenizer (tokenizer.json, byte-level BPE
as Qwen2's, trained here on the texts below) and the ids CosyVoice 2's own tokenizer gives.

    git clone https://github.com/FunAudioLLM/CosyVoice /tmp/CosyVoice    # read at ace7c47
    pip install torch transformers tokenizers
    python tests/data/make_cosyvoice2_text_reference.py /tmp/CosyVoice

cosyvoice/tokenizer/tokenizer.py's CosyVoice2Tokenizer (transformers' AutoTokenizer of the
folder, then its special tokens added) is run unchanged on the folder written here. Written:
tokenizer.json (and transformers' files beside it) and reference.json ({"n_vocab", "ids":
[[text, ids], ...]}).
"""

import importlib.util
import json
import sys
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Qwen2TokenizerFast

TEXTS = [
    "Hello world, it's 2024! Don't stop   now.",
    "你好，世界。今天天气很好。",
    "[breath] He laughed. <laughter>Ha ha</laughter> [laughter]",
    "<|im_start|>instruct<|endofprompt|>Speak slowly.<|im_end|>",
    "tabs\tand\n\nnew lines  ",
    "ünïcödé ñandú Ærøskøbing [lipsmack][mn]",
]
QWEN_SPLIT = (  # Qwen2's pre-tokenising pattern
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def train_tokenizer():
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    )
    tokenizer.train_from_iterator(TEXTS * 3, trainer)
    return tokenizer


def main():
    out = Path(__file__).parent / "cosyvoice_text" / "qwen2"
    out.mkdir(parents=True, exist_ok=True)
    wrapped = Qwen2TokenizerFast(tokenizer_object=train_tokenizer(), eos_token="<|endoftext|>", unk_token=None)
    wrapped.save_pretrained(out)
    spec = importlib.util.spec_from_file_location(
        "cosy_tokenizer", Path(sys.argv[1]) / "cosyvoice/tokenizer/tokenizer.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(
        "whisper", importlib.util.module_from_spec(importlib.util.spec_from_loader("whisper", None))
    )
    whisper_tokenizer = importlib.util.module_from_spec(importlib.util.spec_from_loader("whisper.tokenizer", None))
    whisper_tokenizer.Tokenizer = object  # the module's Whisper part, not used here
    sys.modules["whisper.tokenizer"] = whisper_tokenizer
    spec.loader.exec_module(module)
    upstream = module.CosyVoice2Tokenizer(token_path=str(out))
    reference = {"n_vocab": len(upstream.tokenizer), "ids": [[t, upstream.encode(t)] for t in TEXTS]}
    (out / "reference.json").write_text(json.dumps(reference, ensure_ascii=False) + "\n")
    for name in list(out.iterdir()):  # transformers' extra files: the test reads tokenizer.json alone
        if name.name not in ("tokenizer.json", "reference.json"):
            name.unlink()
    print(reference["n_vocab"], [len(ids) for _, ids in reference["ids"]])


if __name__ == "__main__":
    main()
