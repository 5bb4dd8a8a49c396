"""HuBERT pretraining (task: hubert): MFCC k-means targets, masked prediction, sharded steps."""

import json

import jax
import numpy as np
import pytest
from conftest import assert_same_updates, manifest_data

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


def hubert_config(corpus, tmp_path, **sections):
    base = {
        "task": "hubert",
        "model": TINY_HUBERT,
        "data": manifest_data(corpus, max_seconds=0.1),
        "hubert": {"clusters": 5, "targets_dir": str(tmp_path / "targets"), "mask_length": 2, "final_dim": 8},
        "optimizer": {"lr": 1e-3, "warmup_steps": 0},
        "train": {"steps": 3, "log_every": 1, "eval_every": 3, "checkpoint_every": 3, "async_checkpointing": False},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return config_lib.parse(base)


@pytest.mark.slow  # a training run with its evaluation: 45 s
def test_hubert_pretrains_on_mfcc_units(tone_corpus, tmp_path, capsys):
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


def test_hubert_step_sharded_equals_one_device(tone_corpus, tmp_path):
    # SGD: its update is proportional to the gradient, so the two reductions compare at float32 tolerance.
    cfg = hubert_config(tone_corpus, tmp_path, optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.0})
    one, eight = Trainer(cfg, jax.devices()[:1]), Trainer(cfg)
    source = one.task.train_source()
    batch = {
        k: np.stack([one.task.train_transform(source[i], None)[k] for i in range(8)])
        for k in ("audio", "audio_length", "targets", "mask")
    }
    states = []
    for trainer in (one, eight):
        with trainer.context():
            state = trainer.init(0)
            states.append((jax.device_get(state.params), jax.device_get(trainer.train_step(state, batch)[0].params)))
    assert_same_updates(states[0][0], states[1][1], states[0][1])
