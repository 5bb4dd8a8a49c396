"""Semantic tokenizer: log-mel or recogniser-encoder frames, k-means, de-duplication, save/load."""

import numpy as np
import pytest
from conftest import TINY_SENSEVOICE, manifest_data

from trainers import config as config_lib
from trainers.config import ConfigError
from trainers.data import speech
from trainers.data.semantic import SemanticTokenizer
from trainers.loop import train


def tone(freq, seconds, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_logmel_tokens_follow_the_sound_and_round_trip(tmp_path):
    low, high = tone(300, 0.4), tone(3000, 0.4)
    train = [np.concatenate([low, high]), np.concatenate([high, low]), low, high]
    tokenizer = SemanticTokenizer(None, "logmel", frame_rate=25).fit(train, k=2, steps=10, batch_size=64)
    tokens = tokenizer([np.concatenate([low, high, low])])[0]
    assert len(tokens) == 29  # 1.2 s: 118 fbank frames (25 ms every 10 ms), 29 whole groups of 4
    first = tokens[2]
    assert tokens[2:8] == [first] * 6 and tokens[12:18] == [1 - first] * 6 and tokens[22:28] == [first] * 6
    dedup = SemanticTokenizer(tokenizer.centroids, "logmel", frame_rate=25, deduplicate=True)
    assert dedup([np.concatenate([low, high, low])])[0][:3] in (
        [first, 1 - first, first],
        [1 - first, first, 1 - first],
    )
    path = str(tmp_path / "semantic.npz")
    dedup.save(path)
    loaded = SemanticTokenizer.load(path)
    assert (loaded.features, loaded.frame_rate, loaded.deduplicate) == ("logmel", 25, True)
    assert loaded([np.concatenate([low, high])]) == dedup([np.concatenate([low, high])])
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="bad.npz is not a semantic tokenizer"):
        SemanticTokenizer.load(str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match="must divide 100"):
        SemanticTokenizer(None, "logmel", frame_rate=30)


@pytest.mark.slow  # trains a recogniser run first
def test_recognizer_features(tone_corpus, tmp_path):
    """A CTC run (one step of a small SenseVoice) gives encoder states at 100 / lfr_n Hz; without one, an
    error names the command that trains it."""
    config = {
        "task": "ctc",
        "model": TINY_SENSEVOICE,
        "data": manifest_data(tone_corpus, max_seconds=0.1),
        "speech": {"tokens": "words", "cmvn_utterances": 8, "num_freq_masks": 0, "num_time_masks": 0},
        "train": {"steps": 1, "log_every": 1, "eval_every": 1, "checkpoint_every": 1, "async_checkpointing": False},
    }
    with pytest.raises(ConfigError, match="train it first: python -m trainers.train"):
        SemanticTokenizer(None, "recognizer", frame_rate=16, recognizer_run=str(tmp_path / "ctc")).frames([tone(1, 1)])
    train(config_lib.parse(config), str(tmp_path / "ctc"))
    waves = [speech.read_audio(str(tone_corpus / "wav" / f"train{i}.wav")) for i in range(8)]
    tokenizer = SemanticTokenizer(None, "recognizer", frame_rate=16, recognizer_run=str(tmp_path / "ctc"))
    feats, valid = tokenizer.frames(waves)
    assert feats.shape[2] == 32
    np.testing.assert_array_equal(np.asarray(valid).sum(1), [(len(w) // 160 - 1) // 6 + 1 for w in waves])
    tokens = tokenizer.fit(waves, k=3, steps=5, batch_size=32)(waves)
    assert all(0 <= t < 3 for row in tokens for t in row)
    with pytest.raises(ValueError, match="come at 16.67 Hz"):
        SemanticTokenizer(None, "recognizer", frame_rate=50, recognizer_run=str(tmp_path / "ctc")).frames(waves)


def test_hubert_features_are_an_encoder_layer(tmp_path):
    """features: hubert with transformers' weights file and its config.json (the small HuBERT of
    tests/data/ssl_reference.npz, whose frames come at 800 Hz): layer 1's states of each utterance
    on its own frames, clustered; the settings survive save and load."""
    from conftest import ROOT
    from safetensors.numpy import save_file

    from jaxmodels import ssl

    with np.load(ROOT / "tests" / "data" / "ssl_reference.npz") as f:
        case = "hubert_base_layout"
        save_file(
            {k.split("/sd/")[1]: f[k] for k in f.files if k.startswith(f"{case}/sd/")}, str(tmp_path / "m.safetensors")
        )
        (tmp_path / "config.json").write_text(str(f[f"{case}/config"]))
    encoder = str(tmp_path / "m.safetensors")
    waves = [tone(300, 0.1), tone(3000, 0.05)]
    tokenizer = SemanticTokenizer(None, "hubert", frame_rate=800, encoder=encoder, layer=1)
    feats, valid = tokenizer.frames(waves)
    assert np.asarray(valid).sum(1).tolist() == [79, 39]  # (1600 - 10) // 5 + 1 -> 319 -> 159 -> 79
    model, variables = ssl.load_pretrained(encoder)
    alone = model.apply(variables, waves[1][None], method="hidden_states")[1]
    np.testing.assert_allclose(feats[1, :39], alone[0], rtol=1e-4, atol=1e-5)
    tokenizer.fit(waves, k=3, steps=5, batch_size=32)
    assert [len(t) for t in tokenizer(waves)] == [79, 39]
    tokenizer.save(str(tmp_path / "s.npz"))
    loaded = SemanticTokenizer.load(str(tmp_path / "s.npz"))
    assert (loaded.features, loaded.encoder, loaded.layer) == ("hubert", encoder, 1)
    assert loaded(waves) == tokenizer(waves)
    with pytest.raises(ValueError, match="the encoder's frames come at 800 Hz; frame_rate is 50"):
        SemanticTokenizer(None, "hubert", frame_rate=50, encoder=encoder).frames(waves)
    with pytest.raises(ValueError, match="layer 3: the encoder has hidden states 0..2"):
        SemanticTokenizer(None, "hubert", frame_rate=800, encoder=encoder, layer=3).frames(waves)
