"""CosyVoice end to end (jaxmodels.cosyvoice.pipeline, trainers.tts --cosyvoice) on tiny random
models whose parts fit one another; each part equals upstream's in its own test."""

import dataclasses
import functools
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_cosyvoice_flow import tiny_flow

from jaxmodels.cosyvoice import campplus, flow, hift, llm, pipeline, s3tokenizer, text

DATA = Path(__file__).parent / "data"


def split_cases():
    return [
        ("One. Two! Three?", 80, ["One. Two! Three?"]),
        ("One. Two! Three?", 3, ["One.", "Two!", "Three?"]),
        ("一句话。另一句话！", 80, ["一句话。另一句话！"]),
        ("  ", 80, []),
    ]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    path = tmp_path_factory.mktemp("ranks") / "multilingual.tiktoken"
    shutil.copy(DATA / "cosyvoice_text" / "ranks.tiktoken", path)
    return path


@pytest.mark.parametrize("sentence, limit, pieces", split_cases())
def test_split_text_cuts_at_sentence_ends(ranks, sentence, limit, pieces):
    tokenizer = text.load(str(ranks))
    got = pipeline.split_text(tokenizer, sentence, limit)
    assert got == pieces


def test_text_frontend_equals_upstreams():
    """text.normalize against CosyVoiceFrontEnd.text_normalize run unchanged, without ttsfrd or
    wetext (tests/data/make_cosyvoice_frontend_reference.py): numbers, Chinese, quotes,
    punctuation-only pieces, special tokens; pieces by UTF-8 byte counts."""
    tokenizer = text.load("bytes")
    for sentence, pieces, whole in json.loads((DATA / "cosyvoice_frontend.json").read_text()):
        assert text.normalize(tokenizer, sentence) == pieces, sentence
        assert text.normalize(tokenizer, sentence, split=False) == whole, sentence


def test_load_names_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="variant 'cosyvoice_9b': one of cosyvoice_300m, cosyvoice_300m_25hz"):
        pipeline.CosyVoice.load(str(tmp_path), "cosyvoice_9b")
    with pytest.raises(FileNotFoundError, match="holds no llm.pt or llm.safetensors"):
        pipeline.CosyVoice.load(str(tmp_path))


def random_voice(key, lm, lm_params, flow_cfg, hift_cfg, s3_cfg, text_tokenizer, n_fft=1024) -> pipeline.CosyVoice:
    """A CosyVoice of the LM and its params and randomly initialised flow decoder, HiFT, S3
    tokenizer and narrowed CAM++ of these configurations."""
    keys = iter(jax.random.split(key, 4))
    decoder, vocoder, tokenizer = flow.Flow(flow_cfg), hift.HiFTGenerator(hift_cfg), s3tokenizer.S3Tokenizer(s3_cfg)
    speaker = campplus.CAMPPlus(campplus.CAMPPlusConfig(growth_rate=8, bn_size=2, init_channels=32))
    return pipeline.CosyVoice(
        lm,
        lm_params,
        decoder,
        decoder.init(next(keys), *flow.example_inputs(flow_cfg)),
        vocoder,
        vocoder.init(next(keys), jnp.zeros((1, 2, 80)), jax.random.key(1)),
        functools.partial(
            s3tokenizer.tokenize, tokenizer, tokenizer.init(next(keys), *s3tokenizer.example_inputs(s3_cfg))
        ),
        functools.partial(campplus.embed, speaker, speaker.init(next(keys), jnp.zeros((1, 20, 80)), jnp.array([20]))),
        pipeline.released_mel(flow_cfg, n_fft),
        text_tokenizer,
    )


def tiny_voice(ranks_path) -> pipeline.CosyVoice:
    """Random parts at tiny widths, the released models' interfaces: 64 speech tokens, 192-wide
    x-vectors, 80 mel bins at 22.05 kHz, 256 samples a frame."""
    tokenizer = text.load(str(ranks_path))
    lm_cfg = llm.LMConfig(
        text_token_size=tokenizer.n_vocab,
        speech_token_size=64,
        text_encoder_input_size=16,
        text_encoder_output_size=16,
        llm_input_size=16,
        llm_output_size=16,
        text_encoder_heads=2,
        text_encoder_linear_units=16,
        text_encoder_blocks=1,
        llm_heads=2,
        llm_linear_units=16,
        llm_blocks=1,
    )
    lm = llm.TransformerLM(lm_cfg)
    lm_params = lm.init(jax.random.key(10), *llm.example_inputs(lm_cfg))["params"]
    flow_cfg = tiny_flow(vocab_size=64, output_size=80, spk_embed_dim=192)
    s3_cfg = s3tokenizer.S3Config(n_audio_ctx=200, n_audio_state=32, n_audio_head=2, n_audio_layer=1)
    s3_cfg = dataclasses.replace(s3_cfg, n_codebook_size=64)
    hift_cfg = hift.HiFTConfig(base_channels=16, f0_channels=16)
    return random_voice(jax.random.key(0), lm, lm_params, flow_cfg, hift_cfg, s3_cfg, tokenizer)


def tiny_voice2() -> pipeline.CosyVoice:
    """CosyVoice 2's parts at tiny widths: Qwen2's text ids (tests/data's tokenizer), the 6561 FSQ
    tokens of speech_tokenizer_v2 at 25 Hz, the causal flow's two mel frames a token at 24 kHz."""
    qwen = llm.qwen2.Qwen2Config(
        vocab_size=420, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=4
    )
    lm_cfg = llm.Qwen2LMConfig(llm=dataclasses.replace(qwen, num_key_value_heads=2))
    lm = llm.Qwen2LM(lm_cfg)
    text_ids, speech = jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 8), jnp.int32)
    lm_params = lm.init(jax.random.key(11), text_ids, jnp.array([4]), speech, jnp.array([8]))["params"]
    flow_cfg = tiny_flow(vocab_size=6561, output_size=80, spk_embed_dim=192, input_frame_rate=25, sample_rate=24000)
    flow_cfg = dataclasses.replace(flow_cfg, hop_length=480, token_mel_ratio=2, causal=True, chunk_size=2)
    hift_cfg = hift.config("hift_cosyvoice2", base_channels=16, f0_channels=16)
    s3_cfg = s3tokenizer.S3Config(version=2, conv1_stride=2, n_codebook_size=3**8, n_audio_state=32)
    s3_cfg = dataclasses.replace(s3_cfg, n_audio_head=2, n_audio_layer=1)
    tokenizer = text.load(str(DATA / "cosyvoice_text" / "qwen2"))
    return random_voice(jax.random.key(1), lm, lm_params, flow_cfg, hift_cfg, s3_cfg, tokenizer, n_fft=1920)


@pytest.mark.slow  # the tiny parts compiled
def test_cosyvoice2_speaks_zero_shot_and_cross_lingual():
    voice = tiny_voice2()
    wav_16k, wav_24k = voice_recording(16000), voice_recording(24000)
    tokens, mel, _ = voice.prompt(wav_16k, wav_24k)
    assert tokens.shape == (1, 30) and mel.shape == (1, 60, 80)  # 25 Hz tokens, two 50 Hz frames each
    key = jax.random.key(3)
    said = voice.zero_shot("Hello world.", "a voice", wav_16k, wav_24k, key)
    assert said.ndim == 1 and len(said) > 0 and len(said) % 480 == 0 and np.all(np.isfinite(said))
    crossed = voice.cross_lingual("Hello world.", wav_16k, wav_24k, key)
    assert len(crossed) % 480 == 0 and np.all(np.isfinite(crossed))


def voice_recording(rate: int, seconds: float = 1.2):
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * 150 * t * (1 + 0.1 * np.sin(4 * t)))).astype(np.float32)


@pytest.mark.slow  # the tiny parts compiled: LM decoding, flow sampling, vocoder, S3 tokenizer, CAM++
def test_modes_speak_and_the_command_writes_them(ranks, tmp_path, monkeypatch, capsys):
    from trainers import tts
    from trainers.data import speech

    voice = tiny_voice(ranks)
    wav_16k, wav_22k = voice_recording(16000), voice_recording(22050)
    tokens, mel, xvector = voice.prompt(wav_16k, wav_22k)
    assert tokens.shape == (1, 60) and int(jnp.max(tokens)) < 64  # 50 Hz
    assert mel.shape == (1, len(wav_22k) // 256, 80) and xvector.shape == (1, 192)

    key = jax.random.key(3)
    said = voice.zero_shot("Hello world.", "a voice", wav_16k, wav_22k, key)
    assert said.ndim == 1 and len(said) > 0 and len(said) % 256 == 0
    assert np.all(np.isfinite(said)) and np.abs(said).max() <= 0.99
    np.testing.assert_array_equal(voice.zero_shot("Hello world.", "a voice", wav_16k, wav_22k, key), said)
    cooler = dataclasses.replace(voice, flow_temperature=0.5).zero_shot(
        "Hello world.", "a voice", wav_16k, wav_22k, key
    )
    assert len(cooler) == len(said) and not np.array_equal(cooler, said)  # the same tokens, less noise in the flow
    # Without the flow's prompt the LM still continues the prompt, and the flow reads its x-vector
    # alone: the prompt's mel (its recording at the output rate) changes nothing.
    alone = dataclasses.replace(voice, flow_prompt=False)
    said_alone = alone.zero_shot("Hello world.", "a voice", wav_16k, wav_22k, key)
    assert len(said_alone) == len(said) and not np.array_equal(said_alone, said)
    quieter = alone.zero_shot("Hello world.", "a voice", wav_16k, 0.5 * wav_22k, key)
    np.testing.assert_array_equal(quieter, said_alone)
    assert not np.array_equal(voice.zero_shot("Hello world.", "a voice", wav_16k, 0.5 * wav_22k, key), said)
    crossed = voice.cross_lingual("Hello world.", wav_16k, wav_22k, key)
    assert not np.array_equal(crossed[: len(said)], said[: len(crossed)])
    stored = voice.sft("Hello world. Don't stop.", np.asarray(xvector), key)
    assert len(stored) % 256 == 0 and np.all(np.isfinite(stored))
    instructed = voice.instruct("Hello world.", "Speak slowly.", np.asarray(xvector), key)
    assert len(instructed) % 256 == 0 and not np.array_equal(instructed[: len(stored)], stored[: len(instructed)])

    monkeypatch.setattr(pipeline.CosyVoice, "load", classmethod(lambda cls, directory, variant: voice))
    prompt = tmp_path / "voice.wav"
    speech.write_wav(str(prompt), wav_16k)
    out = tmp_path / "said.wav"
    command = ["--cosyvoice", str(tmp_path), "--text", "Hello world.", "--prompt", str(prompt), "--out", str(out)]
    tts.main([*command, "--prompt-text", "a voice"])
    assert "zero-shot" in capsys.readouterr().out
    assert len(speech.read_audio(str(out), 22050)) % 256 == 0
    tts.main(command)
    assert "cross-lingual" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # argparse's error: --instruct without a stored speaker
        tts.main([*command, "--instruct", "Speak slowly."])
    with pytest.raises(SystemExit, match="--speaker needs --spk2info"):
        tts.main(["--cosyvoice", str(tmp_path), "--text", "Hi.", "--speaker", "x", "--out", str(out)])
