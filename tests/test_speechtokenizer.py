"""SpeechTokenizer against the `speechtokenizer` package (tests/data/make_speechtokenizer_reference.py):
codes exact, audio and semantic features within 1e-4, for the ELU and the Snake models."""

import json

import jax
import numpy as np
import pytest
from conftest import ROOT, assert_resumes_bitwise

from jaxmodels import codec
from jaxmodels.codec import speechtokenizer
from trainers import config as config_lib

REFERENCE = ROOT / "tests" / "data" / "speechtokenizer_reference.npz"


def _case(name):
    with np.load(REFERENCE) as f:
        arrays = {k.split("/", 1)[1]: f[k] for k in f.files if k.startswith(f"{name}/")}
    state_dict = {k[3:]: v for k, v in arrays.items() if k.startswith("sd/")}
    return state_dict, json.loads(str(arrays["config"])), arrays


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("name", ["elu", "snake"])
def test_equals_upstream(name):
    state_dict, config, ref = _case(name)
    st = speechtokenizer.from_torch(state_dict, config)
    wav = ref["wav"].transpose(0, 2, 1)  # upstream's (B, 1, T) -> channels-last
    codes = st.encode(wav)
    np.testing.assert_array_equal(np.asarray(codes), ref["codes"].transpose(1, 0, 2))
    np.testing.assert_array_equal(np.asarray(st.encode(wav, n_q=1)), ref["codes_first"].transpose(1, 0, 2))
    assert _rel(st.decode(codes), ref["audio"].transpose(0, 2, 1)) < 1e-4
    assert _rel(st.semantic_features(wav), ref["feature"]) < 1e-4


def test_released_architecture():
    """The released configurations have upstream's parameter counts; the model compiles and runs
    at 16 kHz with 50 Hz codes and 0.5 kbps per quantizer."""
    with np.load(REFERENCE) as f:
        counts = {a: int(f[f"released_{a}_param_count"]) for a in ("elu", "snake")}
    shapes = {}
    for activation, name in (("elu", "speechtokenizer_hubert_avg"), ("snake", "speechtokenizer_snake")):
        cfg = codec.config(name)
        model = codec.Encodec(cfg)
        shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 640, 1), np.float32)))
        assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes["params"])) == counts[activation]
    assert cfg.frame_rate == 50 and cfg.num_quantizers(0.5) == 1 and cfg.num_quantizers(4.0) == 8


def test_errors():
    state_dict, config, ref = _case("elu")
    st = speechtokenizer.from_torch(state_dict, config)
    with pytest.raises(ValueError, match="quantizers 1 to 3"):
        st.encode(ref["wav"].transpose(0, 2, 1), n_q=4)
    with pytest.raises(ValueError, match=r"channels last"):
        st.encode(ref["wav"])
    with pytest.raises(ValueError, match="lacks"):
        speechtokenizer.encodec_config({"n_filters": 4})
    with pytest.raises(ValueError, match="missing parameters: params/transform/kernel"):
        speechtokenizer.from_torch({k: v for k, v in state_dict.items() if k != "transform.weight"}, config)


def test_compress_command(tmp_path):
    """trainers.compress with SpeechTokenizer's files (weights + its config.json): the lowest
    bandwidth (here 2000 Hz x 5 bits) is the first quantizer alone, and the codes are the model's."""
    from safetensors.numpy import save_file

    from trainers import compress
    from trainers.data import speech

    state_dict, config, ref = _case("elu")
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, str(tmp_path / "st.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    speech.write_wav(str(tmp_path / "in.wav"), ref["wav"][0, 0], 16000)
    model = ["--weights", str(tmp_path / "st.safetensors"), "--model", str(tmp_path / "config.json")]
    compress.main(["encode", str(tmp_path / "in.wav"), str(tmp_path / "codes.npz"), "--bandwidth", "10", *model])
    compress.main(["decode", str(tmp_path / "codes.npz"), str(tmp_path / "out.wav"), *model])
    audio = speech.read_audio(str(tmp_path / "in.wav"))
    with np.load(tmp_path / "codes.npz") as f:
        codes = f["codes_0"]
    st = speechtokenizer.from_torch(state_dict, config)
    np.testing.assert_array_equal(codes, np.asarray(st.encode(audio[None, :, None], n_q=1)))
    assert len(speech.read_audio(str(tmp_path / "out.wav"))) == len(audio)


def test_d_axis_loss_as_upstream():
    """-log sigmoid of each dimension's cosine over time (upstream's cosine_similarity(axis=1)),
    masked frames left out as if cut off."""
    from jaxmodels.codec import losses

    rng = np.random.default_rng(0)
    f, g = rng.standard_normal((2, 2, 7, 5))
    valid = np.arange(7)[None] < np.array([[7], [4]])
    got = np.asarray(losses.d_axis_distillation_loss(f, g, valid))
    for b, n in enumerate((7, 4)):
        x, y = f[b, :n], g[b, :n]
        cosine = (x * y).sum(0) / np.sqrt((x * x).sum(0) * (y * y).sum(0))
        np.testing.assert_allclose(got[b], np.mean(np.log1p(np.exp(-cosine))), rtol=1e-5)


@pytest.fixture(scope="module")
def teacher(tone_corpus, tmp_path_factory):
    """(the corpus's data section, a folder of teacher features): the tiny HuBERT's mean hidden
    state at 800 Hz, as `trainers.extract units --layer avg --features` writes it."""
    from conftest import manifest_data
    from safetensors.numpy import save_file

    from trainers import extract

    tmp_path = tmp_path_factory.mktemp("teacher")
    with np.load(ROOT / "tests" / "data" / "ssl_reference.npz") as f:
        case = "hubert_base_layout"
        save_file(
            {k.split("/sd/")[1]: f[k] for k in f.files if k.startswith(f"{case}/sd/")}, str(tmp_path / "t.safetensors")
        )
        (tmp_path / "config.json").write_text(str(f[f"{case}/config"]))
    data = manifest_data(tone_corpus, max_seconds=0.06)
    (tmp_path / "data.yaml").write_text(json.dumps({"task": "codec", "data": data}))
    extract.main(
        ["units", str(tmp_path / "data.yaml"), "--encoder", str(tmp_path / "t.safetensors"), "--layer", "avg"]
        + ["--features", "--workdir", str(tmp_path / "features"), "--splits", "train,test", "--batch_size", "8"]
    )
    return data, str(tmp_path / "features")


TINY_ST = {"n_filters": 4, "ratios": [5, 4], "dimension": 16, "semantic_dimension": 32, "lstm": 1}
TINY_ST.update(n_q=2, bins=8, target_bandwidths=[2.4, 4.8])


def distillation_config(teacher, **sections):
    """A tiny SpeechTokenizer at the teacher's 800 Hz, trained adversarially with upstream's
    least-squares losses (the MS-STFT discriminator, narrowed; HiFi-GAN's are tested in
    test_codec_training and test_hifigan_discriminator)."""
    data, features = teacher
    config = {
        "task": "codec",
        "model": {"name": "speechtokenizer_hubert_avg", "args": TINY_ST},
        "data": data,
        "codec": {
            "segment_seconds": 0.025,
            "loss_weights": {"l1": 1.0, "adv": 1.0, "feat": 2.0},
            "disc_filters": 2,
            "disc_n_ffts": [64],
            "disc_hop_lengths": [16],
            "disc_win_lengths": [64],
            "adversarial_loss": "lsgan",
            "adversarial_reduction": "sum",
            "semantic_features": features,
            "n_mels": 8,
            "eval_examples": 1,
        },
        "optimizer": {"name": "adam", "lr": 1e-2, "schedule": "constant", "weight_decay": 0.0},
        "evals": [{"name": "unit_quality", "features": "codes", "layer": 0, "every": 12}],
        "train": {"steps": 12, "log_every": 1, "eval_every": 12, "checkpoint_every": 6, "async_checkpointing": False},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config_lib.parse(config)


@pytest.mark.slow
def test_distillation_training_resumes_exactly(teacher, tmp_path):
    """The teacher's features distilled into RVQ-1: the D-axis loss falls, and eval reports it
    with RVQ-1's unit quality; the run resumed from its step-6 checkpoint ends bitwise where
    the straight one does (codebooks and balancer included); a teacher of another width or rate is refused by name."""
    from trainers.config import ConfigError
    from trainers.loop import train
    from trainers.tasks.codec import load_codec

    cfg = distillation_config(teacher)
    final = train(cfg, str(tmp_path / "run"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    distill = [r["train/distill"] for r in rows if "train/distill" in r]
    assert len(distill) == 12 and np.isfinite(distill).all()
    assert np.mean(distill[-4:]) < np.mean(distill[:4]) - 0.03, distill
    assert 0 < final["eval/distill"] < np.log(2) + 1  # -log sigmoid(cos) lies in [0.31, 1.31]
    assert 0 < final["eval/rvq1_pnmi"] <= 1 and 0 < final["eval/rvq1_phone_purity"] <= 1

    assert_resumes_bitwise(cfg, tmp_path / "run", 12, final)

    # Using its codes needs no teacher: the run loads as a codec without the teacher's features.
    saved = tmp_path / "run" / "config.yaml"
    saved.write_text(saved.read_text().replace(teacher[1], str(tmp_path / "gone")))
    [(codes, _)] = load_codec(str(tmp_path / "run")).encode(np.zeros((1, 400, 1), np.float32))
    assert codes.shape == (1, TINY_ST["n_q"], 400 // 20)

    wrong = {**TINY_ST, "semantic_dimension": 24}
    with pytest.raises(ConfigError, match="features of width 24"):
        train(distillation_config(teacher, model={"args": wrong}), str(tmp_path / "bad"))
    slower = {**TINY_ST, "ratios": [5, 8]}
    with pytest.raises(ConfigError, match="the teacher's frames come at 800 Hz, the codec's at 400 Hz"):
        train(distillation_config(teacher, model={"args": slower}), str(tmp_path / "bad"))


@pytest.mark.slow
def test_distillation_step_sharded_matches_one_device(teacher):
    """One adversarial step with distillation over 8 devices equals it on one (SGD, whose step
    is the gradient, so the updates compare at float32 reduction-order tolerance)."""
    from conftest import assert_same_updates, one_step_on_one_and_eight_devices

    sgd = {"name": "sgd", "lr": 0.01, "momentum": 0.0}
    args = {**TINY_ST, "kmeans_init": False}  # k-means amplifies last-bit differences (tested on its own)

    def make_config(mesh):
        return distillation_config(teacher, mesh=mesh, optimizer=sgd, model={"args": args})

    def make_batch(task):
        rng = np.random.default_rng(0)
        batch = task.example_batch(8)
        batch["audio"] = (0.1 * rng.standard_normal(batch["audio"].shape)).astype(np.float32)
        batch["semantic"] = rng.standard_normal(batch["semantic"].shape).astype(np.float32)
        batch["semantic_frames"][-2] = 3  # a short utterance's teacher frames
        return batch

    results = one_step_on_one_and_eight_devices(make_config, make_batch)
    (before, ref, ref_after), (before_sharded, got, after) = results
    jax.tree.map(np.testing.assert_array_equal, before_sharded, before)
    for k in ("train/distill", "train/loss", "train/d_loss", "train/adv", "train/grad_norm", "train/d_grad_norm"):
        np.testing.assert_allclose(got[k], ref[k], rtol=2e-4, atol=1e-6, err_msg=k)
    assert ref["train/distill"] > 0
    assert_same_updates(before, after, ref_after)


@pytest.mark.slow
def test_uslm_is_valle_over_speechtokenizer_codes(tone_corpus, tmp_path):
    """USLM (the SpeechTokenizer paper's TTS): the tts task's VALL-E over SpeechTokenizer's codes,
    the AR stage on RVQ-1 (the distilled, semantic layer) and the NAR stage on the others."""
    from conftest import manifest_data
    from safetensors.numpy import save_file

    from trainers.loop import train

    state_dict, config, _ = _case("elu")
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, str(tmp_path / "st.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    valle = {"d_model": 32, "nhead": 4, "num_layers": 1, "dim_feedforward": 64, "dropout": 0.0}
    cfg = {
        "task": "tts",
        "model": {
            "name": "valle",
            "args": {**valle, "codebook_size": 32, "num_quantizers": 3, "text_vocab_size": 256},
        },
        "data": manifest_data(tone_corpus),
        "tts": {
            "codec_weights": str(tmp_path / "st.safetensors"),
            "codec_model": str(tmp_path / "config.json"),
            "tokens_dir": str(tmp_path / "tokens"),
            "max_frames": 128,
            "max_text_length": 32,
            "eval_examples": 1,
        },
        "train": {"steps": 2, "log_every": 1, "eval_every": 2, "checkpoint_every": 2, "async_checkpointing": False},
    }
    metrics = train(config_lib.parse(cfg), str(tmp_path / "run"))
    assert np.isfinite(metrics["eval/ar_loss"]) and np.isfinite(metrics["eval/nar_loss"])
    from trainers.data import speech

    with np.load(tmp_path / "tokens" / "test.npz") as f:
        codes, offsets = f["codes"], f["code_offsets"]
    audio = speech.read_audio(str(tone_corpus / "wav" / "test0.wav"))
    alone = np.asarray(speechtokenizer.from_torch(state_dict, config).encode(audio[None, :, None]))[0]
    first = codes[offsets[0] : offsets[1]]
    np.testing.assert_array_equal(first.reshape(alone.T.shape), alone.T)
