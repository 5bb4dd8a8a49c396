"""Self-supervised pretraining: HuBERT (task: hubert: MFCC k-means targets, masked prediction)
and wav2vec 2.0 (task: wav2vec2: contrastive over quantized features); sharded steps."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import assert_resumes_bitwise, assert_same_updates, manifest_data

from trainers import config as config_lib
from trainers.loop import Trainer, train

TINY_HUBERT = {
    "name": "hubert_base",
    "args": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "conv_dim": [16] * 7,
        "num_conv_pos_embeddings": 8,
        "num_conv_pos_embedding_groups": 4,
    },
}


SMALL_HEADS = {
    "hubert": {"clusters": 5, "mask_length": 2, "final_dim": 8},
    "wav2vec2": {"mask_length": 2, "num_negatives": 4, "num_codevectors_per_group": 8, "codevector_dim": 8},
}


def hubert_config(corpus, tmp_path, task="hubert", **sections):
    head = {**SMALL_HEADS[task], **({"targets_dir": str(tmp_path / "targets")} if task == "hubert" else {})}
    base = {
        "task": task,
        "model": TINY_HUBERT,
        "data": manifest_data(corpus, max_seconds=0.1),
        task: head,
        "optimizer": {"lr": 1e-3, "warmup_steps": 0},
        "train": {"steps": 3, "log_every": 1, "eval_every": 3, "checkpoint_every": 3, "async_checkpointing": False},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return config_lib.parse(base)


@pytest.mark.slow  # a training run with its evaluation: 45 s
def test_hubert_pretrains_on_mfcc_units_and_exports(tone_corpus, tmp_path, capsys):
    cfg = hubert_config(tone_corpus, tmp_path)
    metrics = train(cfg, str(tmp_path / "run"))
    assert np.isfinite(metrics["eval/masked_loss"]) and 0 <= metrics["eval/masked_accuracy"] <= 1
    assert json.loads((tmp_path / "targets" / "tokenizer.json").read_text())["features"] == "mfcc"
    with np.load(tmp_path / "targets" / "train.npz") as f:
        assert f["units"].max() < 5 and len(f["keys"]) == 24
        assert set(np.diff(f["offsets"])) == {1, 2}  # 0.03-0.06 s: one or two frames at 50 Hz
    assert "fitting 5 mfcc clusters on 24 utterances" in capsys.readouterr().out
    Trainer(cfg)  # the targets are cached: nothing fitted again
    assert "fitting" not in capsys.readouterr().out
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert all(np.isfinite(r["train/masked_loss"]) for r in rows if "train/masked_loss" in r)

    # Its encoder in transformers' format reads back as the run's.
    from jaxmodels import ssl
    from trainers.export import main as export
    from trainers.tasks._pretraining import load_encoder

    export([str(tmp_path / "run"), "--out", str(tmp_path / "exported")])
    model, variables = ssl.load_pretrained(str(tmp_path / "exported" / "model.safetensors"))
    run_model, run_variables = load_encoder(str(tmp_path / "run"))
    audio = np.random.default_rng(0).standard_normal((1, 1600)).astype(np.float32)
    np.testing.assert_allclose(
        model.apply(variables, audio), run_model.apply(run_variables, audio), rtol=1e-5, atol=1e-5
    )


def test_long_utterances_are_cropped_at_random_frames_in_training(tone_corpus, tmp_path):
    """fairseq's random_crop: a training crop starts on a random encoder frame and its targets
    from that frame; evaluation crops from the start."""
    from trainers.data import speech
    from trainers.tasks import get_task

    task = get_task(hubert_config(tone_corpus, tmp_path, data={"max_seconds": 0.03}))  # 480 samples, one frame
    source = task.train_source()
    record = next(r for r in (source[i] for i in range(len(source))) if len(speech.read_audio(r["source"])) >= 800)
    samples = speech.read_audio(record["source"])
    units = task.train_transform.units[record["key"]]
    starts = set()
    for seed in range(20):
        example = task.train_transform(record, np.random.default_rng(seed))
        first = int(
            np.flatnonzero([np.array_equal(example["audio"], samples[320 * f : 320 * f + 480]) for f in range(2)])[0]
        )
        assert example["targets"][0] == units[first] and example["audio_length"] == 480
        starts.add(first)
    assert starts == {0, 1}
    evaluated = task.eval_source()
    record = next(
        r for r in (evaluated[i] for i in range(len(evaluated))) if len(speech.read_audio(r["source"])) >= 800
    )
    for seed in range(5):
        at_start = task.eval_transform(record, np.random.default_rng(seed))
        np.testing.assert_array_equal(at_start["audio"], speech.read_audio(record["source"])[:480])


@pytest.mark.slow  # two short runs of each task
@pytest.mark.parametrize("task", ["hubert", "wav2vec2"])
def test_pretraining_resumes_exactly(tone_corpus, tmp_path, task):
    """Killed after its step-2 checkpoint, a run ends as the straight one: the masks, negatives,
    Gumbel noise and wav2vec 2.0's annealed temperature all follow the step."""
    run = {"steps": 4, "eval_every": 4, "checkpoint_every": 2}
    cfg = hubert_config(tone_corpus, tmp_path, task, train=run)
    final = train(cfg, str(tmp_path / "run"))
    assert_resumes_bitwise(cfg, tmp_path / "run", 4, final)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["hubert", "wav2vec2"])
def test_pretraining_step_sharded_equals_one_device(tone_corpus, tmp_path, task):
    # SGD: its update is proportional to the gradient, so the two reductions compare at float32 tolerance.
    cfg = hubert_config(tone_corpus, tmp_path, task, optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.0})
    one, eight = Trainer(cfg, jax.devices()[:1]), Trainer(cfg)
    source = one.task.train_source()
    batch = {
        k: np.stack([one.task.train_transform(source[i], None)[k] for i in range(8)])
        for k in one.task.example_batch(1)
    }
    states = []
    for trainer in (one, eight):
        with trainer.context():
            state = trainer.init(0)
            states.append((jax.device_get(state.params), jax.device_get(trainer.train_step(state, batch)[0].params)))
    assert_same_updates(states[0][0], states[1][1], states[0][1])


def test_unit_quality_metrics():
    """Phone purity, cluster purity and PNMI (Hsu et al. 2021) of paired frame labels."""
    from trainers.evaluators.unit_quality import frame_phones, unit_quality

    phones = ["a", "a", "b", "b", "c", "c"]
    assert unit_quality(phones, [0, 0, 1, 1, 2, 2]) == {"phone_purity": 1.0, "cluster_purity": 1.0, "pnmi": 1.0}
    one_unit = unit_quality(phones, [0] * 6)
    assert one_unit["pnmi"] == 0.0 and one_unit["cluster_purity"] == 1.0
    assert one_unit["phone_purity"] == pytest.approx(1 / 3)
    split = unit_quality(phones, [0, 1, 2, 3, 4, 5])  # every frame its own unit: pure, but each phone spread over two
    assert split["pnmi"] == pytest.approx(1.0) and split["cluster_purity"] == pytest.approx(0.5)
    merged = unit_quality(phones, [0, 0, 0, 0, 1, 1])  # a and b in one unit: log 2 of log 3 left unexplained
    assert merged["pnmi"] == pytest.approx(1 - (2 / 3) * np.log(2) / np.log(3))
    assert frame_phones([[0.0, "_"], [0.03, "a"], [0.05, "b"]], 4, 50.0) == ["_", "a", "b", "b"]  # centres 0.01 ..


def test_unit_quality_evaluator_scores_the_encoder_and_mfcc(tone_corpus, tmp_path):
    """On tones whose phone is their pitch, MFCC units find the phones; the encoder's layer is
    scored with the params given; a corpus without phones is named."""
    from trainers.evaluators.unit_quality import UnitQuality, UnitQualityConfig

    trainer = Trainer(hubert_config(tone_corpus, tmp_path, "wav2vec2"))
    params = jax.device_get(trainer.init(0).params)
    mfcc = UnitQuality(UnitQualityConfig("unit_quality", features="mfcc", clusters=4), trainer.task)
    metrics, _ = mfcc({}, params)
    assert metrics["mfcc_pnmi"] > 0.6 and metrics["mfcc_phone_purity"] > 0.6, metrics
    model = UnitQuality(UnitQualityConfig("unit_quality", layer=1, clusters=4), trainer.task)
    metrics, _ = model({}, params)
    assert set(metrics) == {"layer1_phone_purity", "layer1_cluster_purity", "layer1_pnmi"}
    assert all(0 <= v <= 1 for v in metrics.values())
    with pytest.raises(config_lib.ConfigError, match="layer 3: the encoder has 0..2"):
        UnitQuality(UnitQualityConfig("unit_quality", layer=3), trainer.task)
    records = [json.loads(line) for line in open(tone_corpus / "test.jsonl")]
    del records[2]["phones"]
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    (tmp_path / "train.jsonl").write_text(open(tone_corpus / "train.jsonl").read())
    (tmp_path / "wav").symlink_to(tone_corpus / "wav")
    trainer = Trainer(hubert_config(tmp_path, tmp_path, "wav2vec2"))
    with pytest.raises(config_lib.ConfigError, match=r"1 of the evaluation split have none \(first: test2\)"):
        UnitQuality(UnitQualityConfig("unit_quality", features="mfcc"), trainer.task)


@pytest.mark.slow  # a training run with its evaluation
def test_ctc_recogniser_on_a_pretrained_encoder(tone_corpus, tmp_path):
    """task ctc with a HuBERT encoder: model.init_from its transformers weights fills the encoder
    (the CTC head keeps its initialisation), the run trains and reports its error rates."""
    from safetensors.numpy import save_file

    from jaxmodels import ssl

    encoder = ssl.create(TINY_HUBERT["name"], **TINY_HUBERT["args"])
    variables = nn.meta.unbox(jax.device_get(encoder.init(jax.random.PRNGKey(1), np.zeros((1, 400), np.float32))))
    state_dict, config = ssl.to_transformers(encoder, variables)
    save_file(state_dict, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    cfg = config_lib.parse(
        {
            "task": "ctc",
            "model": {**TINY_HUBERT, "init_from": str(tmp_path / "model.safetensors")},
            "data": manifest_data(tone_corpus, max_seconds=0.1),
            "speech": {"tokens": "words", "beam_size": 2},
            "optimizer": {"lr": 1e-3, "warmup_steps": 0},
            "train": {
                "steps": 2,
                "log_every": 1,
                "eval_every": 2,
                "checkpoint_every": 2,
                "async_checkpointing": False,
            },
        }
    )
    trainer = Trainer(cfg)
    state = trainer.load_weights(trainer.init(0), cfg.model.init_from)
    params = jax.device_get(state.params)
    jax.tree.map(np.testing.assert_array_equal, params["encoder"], variables["params"])
    assert params["lm_head"]["kernel"].shape == (32, 5)  # <blank>, <unk> and the three words
    metrics = train(cfg, str(tmp_path / "run"))
    assert np.isfinite(metrics["eval/ctc"]) and 0 <= metrics["eval/cer_greedy"]
