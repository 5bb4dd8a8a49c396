"""Upstream checkpoints through the trainer and the commands (model.init_from, --weights):
converted by the family's converter and placed on the sharded parameter layout."""

import json
import os

import jax
import numpy as np
import pytest
from conftest import ROOT, tiny_config
from PIL import Image

from jaxmodels import mambaout
from jaxmodels.nn import load_state_dict
from trainers import config as config_lib
from trainers.cli import InputError
from trainers.loop import Trainer, train

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def m1_config(dims=(16, 32, 48, 64), init_from="", data=(), **sections):
    """The fixture's official MambaOut (m1: depths 1,1,2,1, dims 16-64, 10 classes) on 32x32 images."""
    args = {"depths": [1, 1, 2, 1], "dims": list(dims), "num_classes": 10}
    model = {"name": "mambaout_femto", "args": args, "init_from": init_from}
    return tiny_config(model=model, data={"image_size": 32, **dict(data)}, **sections)


def test_init_from_places_upstream_weights_on_the_sharded_layout(fixtures_dir, capsys):
    """What trainers.train does with model.init_from (the SenseVoice fine-tuning test below runs it)."""
    weights = fixtures_dir / "mambaout" / "m1" / "weights.safetensors"
    trainer = Trainer(m1_config(mesh={"data": 1, "fsdp": 8}, optimizer={"ema_decay": 0.9}))
    state = trainer.load_weights(trainer.init(0), str(weights))
    assert f"initialised from {weights}" in capsys.readouterr().err
    expected = mambaout.from_torch(load_state_dict(weights))["params"]
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), expected)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.ema_params), expected)
    shardings = jax.tree.leaves(trainer.param_shardings)
    assert jax.tree.leaves(jax.tree.map(lambda a: a.sharding, state.params)) == shardings
    assert any("fsdp" in str(s.spec) for s in shardings)
    assert all(not np.any(x) for x in jax.tree.leaves(jax.device_get(state.opt_state)))  # the moments start afresh

    inference = trainer.load_weights(trainer.init_inference(0), str(weights))  # the --weights commands'
    assert inference.opt_state is None and inference.ema_params is None
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(inference.inference_params), expected)

    wider = Trainer(m1_config(dims=(16, 32, 48, 72)))
    mismatch = r"(?s)model mambaout_femto: .*conv\.weight: checkpoint \(3, 3, 48, 64\) vs model \(3, 3, 48, 72\)"
    with pytest.raises(InputError, match=mismatch):
        wider.load_weights(wider.abstract_state, str(weights))
    with pytest.raises(InputError, match="checkpoint not found"):
        trainer.load_weights(trainer.abstract_state, str(fixtures_dir / "no.pth"))


def mapped(array, path) -> bool:
    """Whether ``array``'s memory lies in a memory map of the file ``path`` (Linux's
    /proc/self/maps): then it is read from disk only where it is used."""
    address, inode = array.__array_interface__["data"][0], os.stat(path).st_ino
    for line in open("/proc/self/maps"):
        span, _, _, _, node = line.split()[:5]
        low, high = (int(x, 16) for x in span.split("-"))
        if int(node) == inode and low <= address < high:
            return True
    return False


def test_upstream_files_are_mapped_so_a_process_reads_only_its_slices(fixtures_dir, tmp_path):
    """The converted leaves of a .safetensors file and of a torch zip pickle are views of the
    file's map, so init_from's placement (test above) reads each device's slice, not the file.
    bfloat16 comes out float32, as from torch; a truncated file is an error naming it."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    source = fixtures_dir / "mambaout" / "m1" / "weights.safetensors"
    state = load_state_dict(source)
    expected = mambaout.from_torch({k: np.array(v) for k, v in state.items()})
    for path in (source, tmp_path / "m1.pth"):
        if path.suffix == ".pth":
            torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, path)
        converted = mambaout.from_torch(load_state_dict(path))
        jax.tree.map(np.testing.assert_array_equal, converted, expected)
        assert all(mapped(leaf, path) for leaf in jax.tree.leaves(converted)), path

    save_file({"w": torch.tensor([1.5, -2.25], dtype=torch.bfloat16)}, tmp_path / "bf16.safetensors")
    w = load_state_dict(tmp_path / "bf16.safetensors")["w"]
    assert w.dtype == np.float32 and w.tolist() == [1.5, -2.25]
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(source.read_bytes()[:-100])
    with pytest.raises(InputError, match=r"truncated\.safetensors.*does not lie within the file"):
        Trainer(m1_config()).load_weights(Trainer(m1_config()).abstract_state, str(truncated))


def test_scanned_layers_are_read_where_placed(fixtures_dir):
    """Under lazy_layers (Trainer.load_weights) a scanned parameter is a StackedLayers of views
    of the file, read only where indexed; it equals the eager stack, and load_weights places it
    over 8 devices with the values of from_torch."""
    from jaxmodels import dit
    from jaxmodels.nn.state_dict import StackedLayers, lazy_layers

    case = fixtures_dir / "dit" / "s_p2"
    args = json.loads((case / "config.json").read_text())
    args.pop("class_dropout_prob")
    model_config = {"name": "DiT-S/2", "args": args}
    cfg = config_lib.parse({"task": "diffusion", "model": model_config, "data": {"source": "latents"}})
    trainer = Trainer(cfg)
    weights = case / "weights.safetensors"
    eager = dit.from_torch(load_state_dict(weights), trainer.task.model)
    with lazy_layers():
        lazy = dit.from_torch(load_state_dict(weights), trainer.task.model)
    stacked = [leaf for leaf in jax.tree.leaves(lazy) if isinstance(leaf, StackedLayers)]
    assert stacked and all(mapped(layer, weights) for leaf in stacked for layer in leaf.layers)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), lazy, eager)
    leaf = stacked[0]
    np.testing.assert_array_equal(leaf[1:, ..., :3], np.asarray(leaf)[1:, ..., :3])
    np.testing.assert_array_equal(leaf[0], np.asarray(leaf)[0])
    placed = trainer.load_weights(trainer.init_inference(0), str(weights))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(placed.params), eager["params"])


def timm_eval(image, size=32, crop_pct=1.0):
    """timm's eval transform as torchvision computes it on a PIL image: the shorter side to
    floor(size / crop_pct) and the longer int(short * long / shorter) (bicubic), a centre
    crop at int(round((side - size) / 2)), then ToTensor's /255 and the mean and std."""
    h, w = image.shape[:2]
    short = int(size / crop_pct)
    nh, nw = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC))
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return (resized[top : top + size, left : left + size] / 255.0 - MEAN) / STD


def official_mambaout_folder(fixtures_dir, folder):
    """(config path, weights path): the fixture's official MambaOut saved as released (a torch
    pickle of the state_dict) and twelve images of assorted sizes, filed so that the official
    model's top-1 class is the label of every other one and its third class of the rest:
    top-1 accuracy 1/2 and top-5 accuracy 1 exactly, when the eval transform is timm's."""
    torch = pytest.importorskip("torch")
    state = load_state_dict(fixtures_dir / "mambaout" / "m1" / "weights.safetensors")
    weights = folder / "mambaout_m1.pth"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, weights)
    model = mambaout.MambaOut(depths=(1, 1, 2, 1), dims=(16, 32, 48, 64), num_classes=10)
    rng = np.random.default_rng(0)
    sizes = [(32, 32), (40, 33), (33, 47), (64, 50), (35, 35), (31, 45)] * 2
    images = [rng.integers(0, 256, (h, w, 3), np.uint8) for h, w in sizes]
    x = np.stack([timm_eval(im) for im in images]).astype(np.float32)
    ranked = np.argsort(-np.asarray(model.apply(mambaout.from_torch(state), x)), axis=1)
    for c in range(10):
        (folder / "images" / "val" / f"c{c}").mkdir(parents=True)
    for i, im in enumerate(images):
        label = ranked[i, 0] if i % 2 == 0 else ranked[i, 2]
        Image.fromarray(im).save(folder / "images" / "val" / f"c{label}" / f"{i}.png")
    cfg = m1_config(data={"source": "imagefolder", "path": str(folder / "images"), "eval_batch_size": 16})
    (folder / "m1.yaml").write_text(config_lib.dump(cfg))
    return folder / "m1.yaml", weights


@pytest.mark.slow
def test_evaluate_command_scores_upstream_weights_as_the_official_model(fixtures_dir, tmp_path, capsys):
    """Over 8 devices; tests/test_jaxrun_training.py runs it over two processes."""
    from trainers.evaluate import main as evaluate

    config, weights = official_mambaout_folder(fixtures_dir, tmp_path)
    evaluate([str(config), "--weights", str(weights), "--workdir", str(tmp_path / "ev")])
    result = json.loads((tmp_path / "ev" / "eval_weights.json").read_text())
    assert result["accuracy"] == 0.5 and result["top5_accuracy"] == 1.0, result
    assert f"{weights}: accuracy=0.5000" in capsys.readouterr().out


def test_sample_command_draws_from_upstream_dit_weights(fixtures_dir, tmp_path):
    """trainers.sample --weights without a run: the task's sampler (checked against upstream's
    loops in test_dit) on the converted upstream weights, sharded over 8 devices."""
    from jaxmodels import dit
    from trainers import sharding
    from trainers.sample import main as sample

    case = fixtures_dir / "dit" / "s_p2"
    args = json.loads((case / "config.json").read_text())
    args.pop("class_dropout_prob")
    cfg = config_lib.parse(
        {
            "task": "diffusion",
            "model": {"name": "DiT-S/2", "args": args},
            "data": {"source": "latents", "batch_size": 8, "eval_batch_size": 8},
            "diffusion": {"sampler": "ddim", "sample_respacing": "ddim3", "cfg_scale": 1.5},
        }
    )
    (tmp_path / "dit.yaml").write_text(config_lib.dump(cfg))
    weights = case / "weights.safetensors"
    sample(
        [str(tmp_path / "dit.yaml"), "--weights", str(weights), "--labels", "1,3", "--per_label", "2"]
        + ["--out", str(tmp_path / "s")]
    )
    with np.load(tmp_path / "s.npz") as f:
        samples, labels = f["samples"], f["labels"]
    assert samples.shape == (4, 8, 8, 4) and labels.tolist() == [1, 1, 3, 3]

    trainer = Trainer(cfg)
    params = dit.from_torch(load_state_dict(weights), trainer.task.model)["params"]
    y = np.array([1, 1, 3, 3, 0, 0, 0, 0], np.int32)
    with trainer.context():
        expected = trainer.task.sample(params, y, jax.random.PRNGKey(0), trainer.mesh)[:4]
    assert sharding.batch_divisor(trainer.mesh) == 8
    np.testing.assert_allclose(samples, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def dit_latent_config(fixtures_dir, tmp_path):
    """The DiT fixture's small latent model (8 x 8 x 4) as a config, its weights, and a small
    random VAE in diffusers' layout with its config.json (tests/data/vae_reference.npz): the
    images are 16 x 16."""
    from safetensors.numpy import save_file

    case = fixtures_dir / "dit" / "s_p2"
    args = json.loads((case / "config.json").read_text())
    args.pop("class_dropout_prob")
    cfg = config_lib.parse(
        {
            "task": "diffusion",
            "model": {"name": "DiT-S/2", "args": args},
            "data": {"source": "latents", "batch_size": 8, "eval_batch_size": 8},
            "diffusion": {"sampler": "ddim", "sample_respacing": "ddim3", "cfg_scale": 1.5},
        }
    )
    (tmp_path / "dit.yaml").write_text(config_lib.dump(cfg))
    (tmp_path / "vae").mkdir()
    with np.load(ROOT / "tests" / "data" / "vae_reference.npz") as f:
        save_file({k[3:]: f[k] for k in f.files if k.startswith("sd/")}, str(tmp_path / "vae" / "vae.safetensors"))
        (tmp_path / "vae" / "config.json").write_text(str(f["config"]))
    return tmp_path / "dit.yaml", case / "weights.safetensors", tmp_path / "vae" / "vae.safetensors"


def test_sample_command_writes_an_adm_batch_and_resumes(fixtures_dir, tmp_path):
    """--num_samples: images through the VAE in ADM's format, in global batches of 8 over 8
    devices (the last padded); a batch found done is not drawn again."""
    from trainers.sample import main as sample

    config, weights, vae_weights = dit_latent_config(fixtures_dir, tmp_path)
    out = tmp_path / "samples.npz"
    args = [str(config), "--weights", str(weights), "--vae", str(vae_weights), "--num_samples", "10"]
    args += ["--batch_size", "8", "--seed", "3", "--out", str(out)]
    sample(args)
    with np.load(out) as f:
        images, labels = f["arr_0"], f["arr_1"]
    assert images.shape == (10, 16, 16, 3) and images.dtype == np.uint8 and images.std() > 0
    np.testing.assert_array_equal(labels, np.random.default_rng(3).integers(0, 10, 10))
    assert not (tmp_path / "samples.npz.parts").exists()

    (tmp_path / "samples.npz.parts").mkdir()  # as a run killed after its first batch leaves it
    np.savez(tmp_path / "samples.npz.parts" / "000000.npz", arr_0=np.zeros((8, 16, 16, 3), np.uint8), arr_1=labels[:8])
    sample(args)
    with np.load(out) as f:
        assert not f["arr_0"][:8].any()  # kept, not drawn again
        np.testing.assert_array_equal(f["arr_0"][8:], images[8:])

    sample([*args[:5], "--labels", "1,2", "--per_label", "2", "--out", str(tmp_path / "grid")])  # through the VAE
    with Image.open(tmp_path / "grid.png") as picture, np.load(tmp_path / "grid.npz") as f:
        assert picture.size[0] > 2 * 16 and f["samples"].shape == (4, 8, 8, 4)


def test_codec_starts_from_released_encodec_with_a_fresh_discriminator(fixtures_dir, capsys):
    """A released EnCodec holds the generator and its codebooks; the discriminator keeps its
    initialisation."""
    from test_codec_training import codec_config

    from jaxmodels import codec as codec_lib

    case = fixtures_dir / "encodec" / "causal_mono"
    upstream = json.loads((case / "config.json").read_text())
    keys = ("sample_rate", "dimension", "n_filters", "ratios", "lstm", "n_q", "bins", "target_bandwidths")
    trainer = Trainer(codec_config(model={"args": {k: upstream[k] for k in keys}}))
    fresh = trainer.init(0)
    discriminator = jax.device_get(fresh.params["discriminator"])
    state = trainer.load_weights(fresh, str(case / "weights.safetensors"))
    assert "(kept as initialised: discriminator)" in capsys.readouterr().err
    released = codec_lib.from_torch(load_state_dict(case / "weights.safetensors"), upstream)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params["generator"]), released.params)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.model_state["codebooks"]), released.codebooks)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params["discriminator"]), discriminator)


def released_sensevoice(folder):
    """SenseVoice's three released files in ``folder`` (model.pt, the SentencePiece model as
    bpe.model, am.mvn), for a small random-weight model with the published vocabulary and
    inputs; returns its encoder_conf."""
    torch = pytest.importorskip("torch")
    from helpers import sensevoice_release

    reference = json.loads((ROOT / "tests" / "data" / "sensevoice_rich.json").read_text())
    state = sensevoice_release.random_weights(reference["shapes"], reference["center"])
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in state.items()}}, folder / "model.pt")
    sensevoice_release.build(folder / "bpe.model")
    rng = np.random.default_rng(0)
    sensevoice_release.write_am_mvn(folder / "am.mvn", rng.normal(-10, 1, 560), rng.uniform(0.1, 0.2, 560))
    return reference["encoder_conf"]


def sensevoice_config(folder, encoder):
    """configs/sensevoice_small.yaml's inference settings for the release files in ``folder``."""
    return config_lib.parse(
        {
            "task": "ctc",
            "model": {"name": "sensevoice_small", "args": {"encoder_conf": {**encoder, "dropout_rate": 0.0}}},
            "data": {"source": "manifest", "batch_size": 8, "eval_batch_size": 8},
            "speech": {
                "tokens": "sentencepiece",
                "bpe_model": str(folder / "bpe.model"),
                "cmvn_file": str(folder / "am.mvn"),
                "prompts": True,
            },
        }
    )


@pytest.mark.slow  # a training run of the published vocabulary: 25 s
def test_finetuning_starts_from_released_sensevoice_files(tone_corpus, tmp_path, capsys):
    """configs/sensevoice_small_finetune.yaml, narrowed to the small model, on a manifest corpus."""
    encoder = released_sensevoice(tmp_path)
    overrides = [
        f"model.init_from={tmp_path / 'model.pt'}",
        f"model.args={{encoder_conf: {json.dumps({**encoder, 'dropout_rate': 0.0})}}}",
        f"data.path={tone_corpus}",
        "data.eval_split=test",
        "data.batch_seconds=0.64",  # 8 tones of at most 0.05 or 0.06 s
        "data.bucket_seconds=[0.05]",
        "data.eval_batch_size=8",
        "data.max_seconds=0.1",
        "data.num_workers=0",
        f"speech.bpe_model={tmp_path / 'bpe.model'}",
        f"speech.cmvn_file={tmp_path / 'am.mvn'}",
        "speech.max_label_length=16",
        "speech.beam_size=2",
        "train.steps=2",
        "train.eval_every=2",
        "train.checkpoint_every=2",
        "train.compute_dtype=float32",
        "train.async_checkpointing=false",
    ]
    metrics = train(config_lib.load("configs/sensevoice_small_finetune.yaml", overrides), str(tmp_path / "run"))
    assert f"initialised from {tmp_path / 'model.pt'}" in capsys.readouterr().err
    assert np.isfinite(metrics["eval/ctc"]) and 0 <= metrics["eval/wer_greedy"]
    for name in ("language_accuracy", "emotion_accuracy", "event_accuracy", "error_rate_greedy"):
        assert 0 <= metrics[f"eval/{name}"] <= 1 or name.startswith("error"), name


@pytest.mark.slow
def test_transcribe_equals_funasr_from_audio_to_text(tmp_path, capsys):
    """SenseVoice's released files (small and random here) without a run. The rich output
    equals tests/data/sensevoice_funasr.json string for string: FunASR's own pipeline
    (WavFrontend, am.mvn, SenseVoiceSmall.inference, its SentencePiece tokenizer; made by
    tests/data/make_sensevoice_funasr_reference.py) on three recordings, with the language
    automatic or given, use_itn and ban_emo_unk, and the words' times as its output_timestamp
    (with the workaround of FunASR's issue 2637). Then its fields, and a long recording."""
    import sys
    import wave

    from helpers import sensevoice_release

    from jaxmodels import asr
    from trainers.transcribe import main as transcribe

    sys.path.insert(0, str(ROOT / "tests" / "data"))
    from make_sensevoice_funasr_reference import am_mvn_stats, recordings

    encoder = released_sensevoice(tmp_path)
    sensevoice_release.write_am_mvn(tmp_path / "am.mvn", *am_mvn_stats())
    pcms, files = recordings(), []
    for i, pcm in enumerate(pcms):
        files.append(str(tmp_path / f"{i}.wav"))
        with wave.open(files[-1], "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(pcm.tobytes())
    (tmp_path / "sv.yaml").write_text(config_lib.dump(sensevoice_config(tmp_path, encoder)))
    command = [str(tmp_path / "sv.yaml"), "--weights", str(tmp_path / "model.pt"), "--decoder", "greedy", "--json"]

    def outputs(*options):
        capsys.readouterr()
        transcribe(command + list(options))
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    reference = json.loads((ROOT / "tests" / "data" / "sensevoice_funasr.json").read_text())
    expected, timestamps = reference["texts"], reference["timestamps"]
    for case, texts in expected.items():
        language, use_itn, ban = case.split(",")
        options = ["--language", language] + ["--use_itn"] * (use_itn == "True") + ["--ban_emo_unk"] * (ban == "True")
        results = outputs(*options, "--audio", *files)
        assert [r["rich"] for r in results] == texts, case
        # the words' times as FunASR's output_timestamp gives them
        assert [[r["timestamp"], r["words"]] for r in results] == timestamps[case], case
        assert [r["file"] for r in results] == files and all(r["weights"] == command[2] for r in results)
        for r in results:
            fields = asr.parse_rich(r["rich"])
            assert {k: r[k] for k in fields if k != "text"} == {k: v for k, v in fields.items() if k != "text"}

    # a recording longer than data.max_seconds: recognised in pieces cut in its silences
    gap = np.zeros(4800, np.int16)  # 0.3 s of silence between the recordings
    with wave.open(str(tmp_path / "long.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(np.concatenate([pcms[2], gap, pcms[1], gap, pcms[2]]).tobytes())
    (result,) = outputs("data.max_seconds=1.0", "--audio", str(tmp_path / "long.wav"))
    starts = [p["start"] for p in result["pieces"]] + [2.9]  # 2.9 s in all
    assert len(starts) >= 4 and starts[0] == 0, result["pieces"]  # at least three pieces of at most 1 s
    assert all(0 < b - a <= 1.0 for a, b in zip(starts, starts[1:])), result["pieces"]
    assert result["rich"] == " ".join(p["rich"] for p in result["pieces"])

    # --vad: FSMN-VAD's segments (none over data.max_seconds) merged as FunASR's merge_vad;
    # a recording with no speech in it gives no text
    from helpers import fsmn_vad_release

    from jaxmodels.asr import fsmn_vad
    from trainers.data import speech

    (tmp_path / "fsmn_vad").mkdir()
    vad_dir = fsmn_vad_release.write(tmp_path / "fsmn_vad")
    speech_and_silence = fsmn_vad_release.recordings()
    names = ("vad.wav", "silent.wav")
    for name, wav in zip(names, (speech_and_silence[0], speech_and_silence[3])):
        with wave.open(str(tmp_path / name), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
            w.writeframes(np.round(wav * 32767).astype(np.int16).tobytes())
    heard, silent = outputs("data.max_seconds=2.0", "--vad", vad_dir, "--audio", *(str(tmp_path / n) for n in names))
    wav = speech.read_audio(str(tmp_path / "vad.wav"), 16000)
    merged = fsmn_vad.merge_segments(fsmn_vad.load(vad_dir, max_single_segment_time=2000)(wav), 2000)
    assert len(merged) >= 2 and [p["start"] for p in heard["pieces"]] == [a / 1000 for a, _ in merged]
    assert silent["text"] == "" and "pieces" not in silent
    with pytest.raises(SystemExit, match="--vad"):
        outputs("--vad", str(tmp_path / "nowhere"), "--audio", files[0])
    with pytest.raises(SystemExit, match="unknown language 'xx'; valid: auto, zh, en"):
        transcribe(command + ["--language", "xx", "--audio", *files])
