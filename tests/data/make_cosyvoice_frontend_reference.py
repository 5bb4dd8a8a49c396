"""Makes tests/data/cosyvoice_frontend.json: CosyVoice's text frontend (CosyVoiceFrontEnd.text_normalize
of cosyvoice/cli/frontend.py, run unchanged) on assorted texts, as upstream runs it where neither
ttsfrd nor wetext is installed: numbers spelt out by inflect, Chinese tidied, the text cut into
pieces at sentence ends by token counts.

    git clone https://github.com/FunAudioLLM/CosyVoice /tmp/CosyVoice    # read at ace7c47
    pip install inflect regex torch
    python tests/data/make_cosyvoice_frontend_reference.py /tmp/CosyVoice

frontend.py's module imports what its other methods need (onnxruntime, whisper, torchaudio,
cosyvoice.utils.file_utils): empty stand-ins are put in their place; text_normalize uses none
of them. The front end is made without __init__ (which loads the ONNX models), with what
text_normalize reads: the tokenizer (UTF-8 bytes, one id each: jaxmodels.cosyvoice.text's
"bytes"), allowed_special "all", text_frontend "" and inflect's engine. Written: [[text,
pieces (split=True), the whole (split=False)], ...].
"""

import json
import sys
import types
from pathlib import Path

TEXTS = [
    "I have 3 cats and 1,250 dogs.",
    "Call 911! Room 7 is on floor 12; it costs 3.50 dollars, from 2024 to 2025",
    "The quick brown fox jumps over the lazy dog. It was the year 1999, and nobody noticed. "
    "Then, in 2001, a second fox came along: it jumped too! Did anyone see? Nobody did.",
    'He said "hi." Then he left.',
    "Hello... !!! ok",
    "你好 世界。今天是2024年，天气很好（真的）【注】。",
    "你好，",
    "CosyVoice 是一个 TTS 模型 - 很好",
    "面积是3m²，体积是5m³——就这样.",
    "<|en|>hello 123",
    "  spaces around 42  ",
    "line one\nline two",
    "a",
]


class Bytes:
    """UTF-8 bytes, one id each, as jaxmodels.cosyvoice.text.load("bytes")."""

    def encode(self, text, allowed_special="all"):
        return list(text.encode())


def main():
    root = Path(sys.argv[1])
    for name in ("onnxruntime", "whisper", "torchaudio", "torchaudio.compliance", "torchaudio.compliance.kaldi"):
        sys.modules[name] = types.ModuleType(name)
    file_utils = types.ModuleType("cosyvoice.utils.file_utils")
    file_utils.logging, file_utils.load_wav = __import__("logging"), None
    sys.modules["cosyvoice.utils.file_utils"] = file_utils
    sys.path.insert(0, str(root))
    import inflect
    from cosyvoice.cli.frontend import CosyVoiceFrontEnd

    frontend = CosyVoiceFrontEnd.__new__(CosyVoiceFrontEnd)
    frontend.tokenizer, frontend.allowed_special, frontend.text_frontend = Bytes(), "all", ""
    frontend.inflect_parser = inflect.engine()
    rows = [[t, frontend.text_normalize(t, split=True), frontend.text_normalize(t, split=False)] for t in TEXTS]
    out = Path(__file__).parent / "cosyvoice_frontend.json"
    out.write_text("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n]\n")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
