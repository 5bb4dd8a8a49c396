"""Speech front end, SenseVoice model, corpus and data errors, and the ctc task's pieces."""

import itertools
import json
import math
import sys
import wave

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, TINY_SENSEVOICE, manifest_data, run

from jaxmodels import asr
from trainers import config as config_lib
from trainers.data import speech
from trainers.evaluators.text import char_errors, error_rates, word_errors
from trainers.tasks.ctc import Tokenizer


def test_fbank_peaks_at_a_tones_mel_bin_and_ignores_padding():
    t = np.arange(16000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    feats, frames = asr.fbank(jnp.asarray(tone[None]), jnp.array([16000]))
    assert feats.shape == (1, 98, 80) and int(frames[0]) == 98  # 1 + (16000 - 400) // 160
    banks = asr.mel_banks(80, 512, 16000)
    tone_bin = int(np.argmax(banks[round(1000 / (16000 / 512))]))
    assert np.all(np.argmax(np.asarray(feats[0]), axis=1) == tone_bin)
    # The same audio inside a longer, padded batch row gives the same valid frames.
    batch = np.zeros((2, 24000), np.float32)
    batch[0, :16000], batch[1] = tone, np.random.default_rng(0).normal(size=24000)
    padded, counts = asr.fbank(jnp.asarray(batch), jnp.array([16000, 24000]))
    assert counts.tolist() == [98, 148]
    np.testing.assert_allclose(padded[0, :98], feats[0], rtol=1e-5, atol=1e-4)
    assert np.all(np.asarray(padded[0, 98:]) == 0)


def test_fbank_equals_torchaudio_kaldi_as_funasr_calls_it():
    """tests/data/fbank_reference.npz: torchaudio.compliance.kaldi.fbank with FunASR's
    WavFrontend settings for SenseVoice (made by tests/data/make_fbank_reference.py)."""
    sys.path.insert(0, str(ROOT / "tests" / "data"))
    from make_fbank_reference import waveforms

    with np.load(ROOT / "tests" / "data" / "fbank_reference.npz") as f:
        reference = {k: f[k] for k in f.files}
    waves = waveforms()
    audio, lengths = speech.pad_waveforms(list(waves.values()))
    feats, frames = asr.fbank(jnp.asarray(audio), jnp.asarray(lengths))
    for b, name in enumerate(waves):
        assert int(frames[b]) == len(reference[name])
        np.testing.assert_allclose(feats[b, : int(frames[b])], reference[name], rtol=0, atol=5e-4, err_msg=name)


def _apply_lfr_reference(inputs, lfr_m, lfr_n):
    """FunASR's apply_lfr, one utterance, as published (loop form)."""
    frames = inputs.shape[0]
    out_frames = int(np.ceil(frames / lfr_n))
    inputs = np.vstack([np.repeat(inputs[:1], (lfr_m - 1) // 2, axis=0), inputs])
    frames += (lfr_m - 1) // 2
    out = []
    for i in range(out_frames):
        if lfr_m <= frames - i * lfr_n:
            out.append(inputs[i * lfr_n : i * lfr_n + lfr_m].reshape(-1))
        else:
            frame = inputs[i * lfr_n :].reshape(-1)
            for _ in range(lfr_m - (frames - i * lfr_n)):
                frame = np.concatenate([frame, inputs[-1]])
            out.append(frame)
    return np.stack(out)


def test_low_frame_rate_matches_funasr():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(3, 40, 5)).astype(np.float32)
    lengths = np.array([40, 23, 6])
    stacked, out_lengths = asr.low_frame_rate(jnp.asarray(feats), jnp.asarray(lengths), 7, 6)
    assert out_lengths.tolist() == [7, 4, 1]
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(stacked[b, : out_lengths[b]], _apply_lfr_reference(feats[b, :n], 7, 6))


def test_spec_augment_masks_bands_and_spans_within_bounds():
    feats = jnp.ones((4, 50, 7 * 20))
    lengths = jnp.array([50, 40, 30, 20])
    out = np.asarray(asr.spec_augment(jax.random.PRNGKey(0), feats, lengths, 2, 5, 2, 6, stacked_frames=7))
    for b in range(4):
        zero_bins = np.all(out[b] == 0, axis=0).reshape(7, 20)
        assert np.all(zero_bins == zero_bins[0])  # the same mel bins in each stacked frame
        assert zero_bins[0].sum() <= 2 * 4
        zero_frames = np.all(out[b] == 0, axis=1)
        assert zero_frames.sum() <= 2 * 5 and not zero_frames[int(lengths[b]) :].any()


def test_degrade_band_limits_and_adds_noise_at_the_asked_level():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 16000)).astype(np.float32) * 0.1
    lengths = jnp.array([16000, 9000])
    x[1, 9000:] = 0
    key = jax.random.PRNGKey(0)
    lowpassed = np.asarray(asr.degrade(key, jnp.asarray(x), lengths, 1.0, (3000.0, 3000.0), (200.0, 200.0)))
    spectrum = np.abs(np.fft.rfft(lowpassed[0]))
    assert spectrum[3100:].max() < 1e-3 * spectrum[:2900].mean()  # 1 Hz bins: nothing above the cutoff
    assert not lowpassed[1, 9000:].any()  # padding stays silent
    noisy = np.asarray(asr.degrade(key, jnp.asarray(x), lengths, 1.0, (8000.0, 8000.0), (10.0, 10.0)))
    snr = 10 * np.log10(np.mean(x[0] ** 2) / np.mean((noisy[0] - x[0]) ** 2))
    assert abs(snr - 10) < 0.2
    np.testing.assert_array_equal(asr.degrade(key, jnp.asarray(x), lengths, 0.0), x)


def tiny_sensevoice(num_blocks=2, **overrides):
    conf = dict(output_size=32, attention_heads=4, linear_units=64, num_blocks=num_blocks, tp_blocks=1)
    return asr.create("sensevoice_small", vocab_size=30, input_size=40, encoder_conf=conf, **overrides)


def test_sensevoice_small_has_the_published_size_and_names():
    model = asr.create("sensevoice_small")
    assert asr.param_count(model) == 233_999_167  # 70 SAN-M layers, 512 wide, 25,055 tokens
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 560)), jnp.array([8])))
    encoder = shapes["params"]["encoder"]  # upstream's encoders.<i>.<name>: encoders/<name>[i]
    assert encoder["encoders"]["feed_forward"]["w_1"]["kernel"].names == ("layers", "embed", "mlp")
    assert encoder["encoders"]["feed_forward"]["w_1"]["kernel"].value.shape == (49, 512, 2048)
    assert encoder["tp_encoders"]["norm1"]["scale"].value.shape == (20, 512)
    with pytest.raises(ValueError, match="unknown encoder_conf key"):
        asr.create("sensevoice_small", encoder_conf={"layers": 3})
    with pytest.raises(ValueError, match="unknown recogniser config"):
        asr.create("sensevoice_large")


@pytest.mark.parametrize("prompts", [False, True])
def test_padding_does_not_change_the_valid_frames(prompts):
    model = tiny_sensevoice(use_prompts=prompts)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 20, 40))
    lengths = jnp.array([20, 12])
    variables = jax.jit(model.init)(jax.random.PRNGKey(1), x, lengths)
    apply = jax.jit(model.apply)
    out, out_lengths = apply(variables, x, lengths)
    extra = 4 if prompts else 0
    assert out.shape == (2, 20 + extra, 30) and out_lengths.tolist() == [20 + extra, 12 + extra]
    noisy, _ = apply(variables, x.at[1, 12:].set(100.0), lengths)
    np.testing.assert_array_equal(noisy[1, : 12 + extra], out[1, : 12 + extra])
    alone, _ = apply(variables, x[1:, :12], lengths[1:])
    np.testing.assert_allclose(alone[0], out[1, : 12 + extra], atol=1e-5)


@pytest.mark.slow  # compiles a remat backward pass: 15 s
def test_remat_changes_memory_not_numbers():
    model = tiny_sensevoice(num_blocks=4)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 10, 40))
    lengths = jnp.array([10, 7])
    params = model.init(jax.random.PRNGKey(1), x, lengths)["params"]

    def loss(params, remat):
        out, _ = model.clone(remat=remat).apply(
            {"params": params}, x, lengths, deterministic=False, rngs={"dropout": jax.random.PRNGKey(2)}
        )
        return jnp.sum(out**2)

    step = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    (a, ga), (b, gb) = (step(params, remat) for remat in (False, True))
    np.testing.assert_allclose(a, b, rtol=1e-6)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-4), ga, gb)


def test_long_audio_is_cut_in_its_silences():
    rng = np.random.default_rng(0)
    sr, parts = 16000, []
    for _ in range(3):  # 4 s of speech-like noise, then 1 s of near silence
        parts += [0.3 * rng.standard_normal(4 * sr), 0.001 * rng.standard_normal(sr)]
    audio = np.concatenate(parts).astype(np.float32)
    assert asr.segments(audio, sr, 30.0) == [(0, len(audio))]
    assert asr.segments(audio, sr, 6.0) == [(0, 72000), (72000, 152000), (152000, 240000)]  # mid-silence
    # one long region: cut at its quietest frames, every piece within the limit
    swell = (0.3 * rng.standard_normal(20 * sr) * np.abs(np.sin(np.arange(20 * sr) / sr * np.pi * 0.7))).astype(
        np.float32
    )
    pieces = asr.segments(swell, sr, 6.0)
    assert pieces[0][0] == 0 and pieces[-1][1] == len(swell) and all(b - a <= 6 * sr for a, b in pieces)
    assert all(a == b for (_, a), (b, _) in zip(pieces, pieces[1:]))
    assert all(min(abs(a / sr * 0.7 - round(a / sr * 0.7)), 1) < 0.02 for a, _ in pieces[1:])  # near sin's zeros


def test_tokenizers_round_trip():
    words = Tokenizer.build(["three one", "anna has one cat"], "words")
    assert words.decode(words.encode("one cat three")) == "one cat three"
    assert words.encode("one dog") == [words.index["one"], 1]
    chars = Tokenizer.build(["ab ba"], "chars")
    assert chars.decode(chars.encode("ab  ab")) == "ab ab"
    pieces = Tokenizer(["<blank>", "<unk>", "\u2581th", "\u2581t", "ree", "e", "r", "\u2581one"], "pieces")
    assert pieces.encode("three one") == [2, 4, 7] and pieces.decode([2, 4, 7]) == "three one"
    assert pieces.encode("tx") == [3, 1]
    assert word_errors("a b c d", "a x c") == (2, 4)
    assert char_errors("今天 天气", "今天天汽") == (1, 4)
    assert error_rates(["a b", "c"], ["a", "c d"]) == {"wer": 2 / 3, "cer": 2 / 3}
    # each utterance by its language's measure: characters for Chinese, words for English
    mixed = error_rates(["今天 天气", "one two"], ["今天天汽", "one"], ["zh", "en"])
    assert mixed["error_rate"] == (1 + 1) / (4 + 2)


def test_corpus_is_deterministic_with_held_out_voices(tmp_path):
    for name in ("a", "b"):  # each in a fresh process, as a user's run makes it
        code = f"from trainers.data.speech import build_corpus; build_corpus({str(tmp_path / name)!r}, 3, 12, 4)"
        run([sys.executable, "-c", code])
    a_train = speech.read_manifest(str(tmp_path / "a" / "train.jsonl"))
    b_train = speech.read_manifest(str(tmp_path / "b" / "train.jsonl"))
    assert [(r["target"], r["speaker"]) for r in a_train] == [(r["target"], r["speaker"]) for r in b_train]
    for a, b in zip(a_train, b_train):  # the same samples: eSpeak's noise is seeded
        assert np.array_equal(speech.read_audio(a["source"]), speech.read_audio(b["source"]))
    test = speech.read_manifest(str(tmp_path / "a" / "test.jsonl"))
    assert not {r["voice"] for r in a_train} & {r["voice"] for r in test}
    audio = speech.read_audio(test[0]["source"])
    assert 0.3 < len(audio) / 16000 < 5 and np.abs(audio).max() > 0.05


def test_bad_audio_is_named(tmp_path):
    good = tmp_path / "good.wav"
    speech.write_wav(str(good), np.zeros(1600, np.float32))
    with pytest.raises(ValueError, match="unreadable audio file .*missing.wav"):
        speech.read_audio(str(tmp_path / "missing.wav"))
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(ValueError, match="unreadable audio file .*text.wav"):
        speech.read_audio(str(tmp_path / "text.wav"))
    with wave.open(str(tmp_path / "empty.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
    with pytest.raises(ValueError, match="empty audio file .*empty.wav"):
        speech.read_audio(str(tmp_path / "empty.wav"))
    speech.write_wav(str(tmp_path / "8k.wav"), np.zeros(800, np.float32), sample_rate=8000)
    with pytest.raises(ValueError, match="8k.wav: sample rate 8000 Hz, expected 16000 Hz"):
        speech.read_audio(str(tmp_path / "8k.wav"))
    assert len(speech.read_audio(str(tmp_path / "8k.wav"), resample=True)) == 1600
    (tmp_path / "m.jsonl").write_text(json.dumps({"key": "a", "source": "good.wav"}) + "\n")
    with pytest.raises(ValueError, match=r"m.jsonl:1: missing \['target'\]"):
        speech.read_manifest(str(tmp_path / "m.jsonl"))


def test_librispeech_layout(tmp_path):
    chapter = tmp_path / "dev-clean" / "84" / "121123"
    chapter.mkdir(parents=True)
    speech.write_wav(str(chapter / "84-121123-0000.wav"), np.zeros(1600, np.float32))
    (chapter / "84-121123.trans.txt").write_text("84-121123-0000 GO DO YOU HEAR\n")
    records = speech.read_librispeech(str(tmp_path / "dev-clean"))
    assert records == [
        {
            "key": "84-121123-0000",
            "source": str(chapter / "84-121123-0000.wav"),
            "target": "go do you hear",
            "speaker": "84",
        }
    ]
    other = tmp_path / "dev-other" / "85" / "1"
    other.mkdir(parents=True)
    speech.write_wav(str(other / "85-1-0000.wav"), np.zeros(1600, np.float32))
    (other / "85-1.trans.txt").write_text("85-1-0000 HELLO\n")
    cfg = config_lib.parse({"task": "ctc", "data": {"source": "librispeech", "path": str(tmp_path)}})
    joined = speech.SpeechSource(cfg, "dev-clean+dev-other").records  # "+" joins splits
    assert [r["key"] for r in joined] == ["84-121123-0000", "85-1-0000"]
    (chapter / "84-121123.trans.txt").write_text("84-121123-0001 MISSING AUDIO\n")
    with pytest.raises(FileNotFoundError, match="no audio for 84-121123-0001"):
        speech.read_librispeech(str(tmp_path / "dev-clean"))
    assert math.isclose(len(speech.read_audio(str(chapter / "84-121123-0000.wav"))), 1600)


def test_reproduces_the_official_sensevoice_model():
    """tests/data/sensevoice_tiny.npz: upstream's model.py on random weights (made by
    tests/data/make_sensevoice_reference.py), converted with from_torch."""
    from jaxmodels.asr import convert

    with np.load(ROOT / "tests" / "data" / "sensevoice_tiny.npz") as f:
        ref = {k: f[k] for k in f.files}
    state = {k[len("state/") :]: v for k, v in ref.items() if k.startswith("state/")}
    config = convert.infer_config(state)
    assert config["encoder_conf"] == dict(
        output_size=32, attention_heads=4, linear_units=64, num_blocks=3, tp_blocks=2, kernel_size=11
    )
    model = asr.SenseVoiceSmall(**{**config, "encoder_conf": {**config["encoder_conf"], "dropout_rate": 0.0}})
    variables = convert.from_torch(state, model)
    logits, lengths = model.apply(variables, ref["x"], ref["lengths"], ref["language"], ref["textnorm"])
    for b, n in enumerate(np.asarray(lengths)):
        np.testing.assert_allclose(logits[b, :n], ref["logits"][b, :n], rtol=1e-5, atol=1e-5)
    broken = dict(state)
    del broken["encoder.tp_norm.weight"]
    broken["encoder.extra.weight"] = np.zeros(3)
    with pytest.raises(
        ValueError, match="(?s)unexpected keys: encoder.extra.weight.*missing parameters: encoder/tp_norm/scale"
    ):
        convert.from_torch(broken, model)


def test_rich_output_equals_funasr_string_for_string(tmp_path):
    """tests/data/sensevoice_rich.json: FunASR's SenseVoiceSmall.inference (upstream's model.py,
    made by tests/data/make_sensevoice_rich_reference.py) on seeded random weights with the
    published 25,055-token vocabulary: language auto, en and zh, use_itn, ban_emo_unk."""
    sys.path.insert(0, str(ROOT / "tests" / "data"))
    from helpers import sensevoice_release
    from make_sensevoice_rich_reference import features

    from trainers.tasks.ctc import SentencePieceTokenizer

    ref = json.loads((ROOT / "tests" / "data" / "sensevoice_rich.json").read_text())
    state = sensevoice_release.random_weights(ref["shapes"], ref["center"])
    model = asr.SenseVoiceSmall(**asr.infer_config(state))
    variables = asr.from_torch(state, model)
    sensevoice_release.build(tmp_path / "sensevoice.model")
    tokenizer = SentencePieceTokenizer(str(tmp_path / "sensevoice.model"))
    feats, lengths = features()

    @jax.jit
    def decode(language, textnorm, banned):
        rows = jnp.full((len(lengths),), language), jnp.full((len(lengths),), textnorm)
        logits, frames = model.apply(variables, feats, lengths, *rows)
        return asr.rich_greedy(logits, frames, banned)

    for case, expected in ref["texts"].items():
        language, use_itn, ban = case.split(",")
        textnorm = asr.TEXTNORM_QUERY["withitn" if use_itn == "True" else "woitn"]
        labels, paddings = decode(asr.LANGUAGE_QUERY[language], textnorm, 25009 if ban == "True" else 25054)
        texts = [tokenizer.decode(row[pad < 0.5]) for row, pad in zip(np.asarray(labels), np.asarray(paddings))]
        assert texts == expected, case
    assert tokenizer.index["<|EMO_UNKNOWN|>"] == 25009


def test_rich_output_is_parsed_into_its_fields():
    fields = asr.parse_rich("<|en|><|HAPPY|><|Laughter|><|woitn|>three seven")
    assert fields == dict(language="en", emotion="HAPPY", event="Laughter", textnorm="woitn", text="three seven")
    # a tag the model did not emit is empty; one of a kind already seen ends the tags
    fields = asr.parse_rich("<|zh|><|Speech|><|Speech|> one")
    assert fields == dict(language="zh", emotion="", event="Speech", textnorm="", text="<|Speech|> one")


def test_ctc_viterbi_is_the_forced_alignment():
    # FunASR's timestamps' numpy Viterbi and the batched forced_align find the same best path
    # (random log-probabilities: no ties), with repeats that need a blank between them.
    from jaxmodels.ctc import forced_align, paddings_from_lengths

    rng = np.random.default_rng(0)
    log_probs = np.log(rng.dirichlet(np.ones(7), size=30)).astype(np.float32)
    targets = np.array([3, 3, 5, 1, 6])
    path = asr.ctc_viterbi(log_probs, targets)
    expected = forced_align(log_probs[None], np.zeros((1, 30)), targets[None], paddings_from_lengths(np.array([5]), 5))
    np.testing.assert_array_equal(path, np.asarray(expected.frame_labels[0]))
    assert [k for k, _ in itertools.groupby(path) if k] == list(targets)
    # frames whose blank counts as certain take blank wherever the path allows it
    sure = np.zeros(30, bool)
    sure[10:20] = True
    assert (asr.ctc_viterbi(log_probs, targets, blank_frames=sure)[10:20] == 0).sum() >= 5


def test_bad_training_audio_is_an_error_or_skipped_and_counted(tmp_path):
    from trainers import config as config_lib
    from trainers.tasks.ctc import AudioTransform

    speech.write_wav(str(tmp_path / "long.wav"), np.zeros(16000 * 4, np.float32))
    (tmp_path / "bad.wav").write_text("not audio")
    tokenizer = Tokenizer.build(["one two"], "words")
    strict = AudioTransform(config_lib.load("configs/ctc_speech.yaml", []), tokenizer)
    with pytest.raises(ValueError, match="long.wav: 4.00 s is longer than data.max_seconds=3.0"):
        strict({"source": str(tmp_path / "long.wav"), "target": "one"}, None)
    with pytest.raises(ValueError, match="unreadable audio file .*bad.wav"):
        strict({"source": str(tmp_path / "bad.wav"), "target": "one"}, None)
    lenient = AudioTransform(config_lib.load("configs/ctc_speech.yaml", ["data.on_bad_audio=skip"]), tokenizer)
    for name in ("long.wav", "bad.wav"):
        record = lenient({"source": str(tmp_path / name), "target": "one"}, None)
        assert record["mask"] == 0 and record["audio"].shape == (48000,)
    good = tmp_path / "good.wav"
    speech.write_wav(str(good), np.full(8000, 0.1, np.float32))
    record = lenient({"source": str(good), "target": "two one"}, None)
    assert (
        record["mask"] == 1
        and record["audio_length"] == 8000
        and list(record["labels"][:2]) == [tokenizer.index["two"], tokenizer.index["one"]]
        and record["label_length"] == 2
    )


@pytest.mark.slow
def test_a_skipped_utterance_adds_nothing_to_the_update(tone_corpus):
    """A row masked out (here an unreadable file under data.on_bad_audio=skip: no audio, no
    frames) must leave the step as the batch without it, whatever the row holds."""
    from trainers import config as config_lib
    from trainers.loop import Trainer

    cfg = config_lib.parse(
        {
            "task": "ctc",
            "model": TINY_SENSEVOICE,
            "data": manifest_data(tone_corpus, max_seconds=0.1, on_bad_audio="skip"),
            "speech": {
                "tokens": "words",
                "cmvn_utterances": 8,
                "dither": 0.0,
                "num_freq_masks": 0,
                "num_time_masks": 0,
            },
            "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0},
        },
    )
    trainer = Trainer(cfg, jax.devices()[:1])
    task, source = trainer.task, trainer.task.train_source()
    good = [task.train_transform(source[i], None) for i in range(7)]
    skipped = task.train_transform({**source[0], "source": str(tone_corpus / "missing.wav")}, None)
    assert skipped["mask"] == 0 and skipped["audio_length"] == 0
    garbage = {
        **good[0],
        "audio": np.random.default_rng(0).standard_normal(good[0]["audio"].shape).astype(np.float32),
        "mask": np.float32(0.0),
    }

    def step(rows):
        batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        with trainer.context():
            state, metrics = trainer.train_step(trainer.init(0), batch)
        return jax.device_get(state.params), jax.device_get(metrics)

    without, _ = step(good)
    with_skipped, metrics = step(good + [skipped])
    with_garbage, _ = step(good + [garbage])
    assert metrics["train/skipped"] == 1 and metrics["train/nonfinite"] == 0
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), with_skipped, without)
    jax.tree.map(np.testing.assert_array_equal, with_garbage, with_skipped)


def by_duration_config(corpus, **sections):
    """ctc on the tone corpus in batches by duration: 13 of its 24 training tones are at most
    0.05 s, the others at most 0.06 s; batch_seconds 0.64 holds 8 of either (8 devices)."""
    from trainers import config as config_lib

    base = {
        "task": "ctc",
        "model": TINY_SENSEVOICE,
        "data": manifest_data(corpus, max_seconds=0.08, batch_seconds=0.64, bucket_seconds=[0.05]),
        "speech": {"tokens": "words", "cmvn_utterances": 8, "dither": 0.0, "num_freq_masks": 0, "num_time_masks": 0},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0},
        "train": {"steps": 4, "log_every": 1, "eval_every": 4, "checkpoint_every": 4, "async_checkpointing": False},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return config_lib.parse(base)


@pytest.mark.slow  # a training run compiling two shapes: 25 s
def test_speech_trains_in_batches_by_duration(tone_corpus, tmp_path, capfd):
    from trainers.loop import Trainer, _train_iterator, train

    cfg = by_duration_config(tone_corpus)
    batches = [next(it) for it in [_train_iterator(Trainer(cfg))] for _ in range(4)]
    assert sorted({b["audio"].shape for b in batches}) == [(8, 800), (8, 960)]
    assert all((b["audio_length"] <= b["audio"].shape[1]).all() for b in batches)
    metrics = train(cfg, str(tmp_path / "run"))
    assert "batches by length: 8 x 0.05, 8 x 0.06" in capfd.readouterr().err
    assert math.isfinite(metrics["eval/ctc"])
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert all(math.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)


def test_bucket_lengths_are_checked(tone_corpus):
    from trainers.loop import Trainer

    for bounds in ([0.05, 0.04], [0.08]):
        with pytest.raises(ValueError, match=r"data.bucket_seconds=.* must ascend strictly between 0 and"):
            Trainer(by_duration_config(tone_corpus, data={"bucket_seconds": bounds})).task.length_buckets()
    octiles = Trainer(by_duration_config(tone_corpus, data={"bucket_seconds": []})).task.length_buckets()
    assert len(octiles.bounds) == 8 and octiles.bounds[-1] == 0.06  # the longest tone: 0.0599 s
    counts = np.bincount(octiles.bucket_of())  # about an eighth of the 24 tones each (bounds to the ms)
    assert len(counts) == 8 and 1 <= counts.min() and counts.max() <= 5, counts
