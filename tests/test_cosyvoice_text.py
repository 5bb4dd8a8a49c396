"""CosyVoice's text tokenizers against upstream's own (tests/data/make_cosyvoice_text_reference.py)."""

import json
import shutil
from pathlib import Path

import pytest

from jaxmodels.cosyvoice import text

DATA = Path(__file__).parent / "data" / "cosyvoice_text"
RANKS_FILE = {"whisper": "multilingual.tiktoken", "cosyvoice": "multilingual_zh_ja_yue_char_del.tiktoken"}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """The reference's ranks under each file name upstream selects its special tokens by."""
    folder = tmp_path_factory.mktemp("ranks")
    out = {}
    for name, file in RANKS_FILE.items():
        shutil.copy(DATA / "ranks.tiktoken", folder / file)
        out[name] = text.load(str(folder / file))
    return out


def test_ids_equal_upstreams(tokenizers):
    reference = json.loads((DATA / "reference.json").read_text())
    for name, tokenizer in tokenizers.items():
        assert tokenizer.n_vocab == reference["n_vocab"][name]
    for name, sentence, ids in reference["ids"]:
        assert text.encode(tokenizers[name], sentence) == ids, (name, sentence)
        assert tokenizers[name].decode(ids) == sentence


def test_released_vocabulary_sizes():
    """Whisper's 50,257 ranks give CosyVoice-300M's 51,866 text ids; CosyVoice's 58,836 ranks
    give 60,510, within CosyVoice-300M-25Hz's 60,515."""
    assert 50257 + len(text.special_tokens(cosyvoice=False)) == 51866
    assert 58836 + len(text.special_tokens(cosyvoice=True)) == 60510


def test_bad_ranks_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.tiktoken"):
        text.load(str(tmp_path / "absent.tiktoken"))
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("QQ== 0\nnot-a-rank-line\n")
    with pytest.raises(ValueError, match=r"bad.tiktoken:2: not a tiktoken ranks line"):
        text.load(str(bad))


def test_cosyvoice2_ids_equal_upstreams():
    """Qwen2's byte-level BPE with CosyVoice 2's special tokens, against CosyVoice2Tokenizer
    (tests/data/make_cosyvoice2_text_reference.py) on the folder and on its tokenizer.json."""
    reference = json.loads((DATA / "qwen2" / "reference.json").read_text())
    for path in (DATA / "qwen2", DATA / "qwen2" / "tokenizer.json"):
        tokenizer = text.load(str(path))
        assert tokenizer.n_vocab == reference["n_vocab"]
        for sentence, ids in reference["ids"]:
            assert text.encode(tokenizer, sentence) == ids, sentence
            assert tokenizer.decode(ids) == sentence
