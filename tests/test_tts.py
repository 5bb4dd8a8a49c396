"""The tts task: codec tokens of a corpus, VALL-E / delayed-LM training, sharding, zero-shot TTS eval."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from conftest import manifest_data

from trainers import config as config_lib
from trainers.data import speech
from trainers.loop import Trainer, train

TINY_VALLE = {
    "d_model": 32,
    "nhead": 4,
    "num_layers": 1,
    "dim_feedforward": 64,
    "dropout": 0.0,
    "codebook_size": 16,
    "num_quantizers": 4,
    "text_vocab_size": 256,
}
TINY_DELAYED = {"dim": 32, "num_heads": 4, "num_layers": 1, "hidden_scale": 2, "codebook_size": 16, "num_codebooks": 4}


def tts_config(tone_corpus, fixtures_dir, tmp_path, model="valle", args=TINY_VALLE, **sections):
    codec = fixtures_dir / "encodec" / "causal_mono"
    base = {
        "task": "tts",
        "model": {"name": model, "args": args},
        "data": manifest_data(tone_corpus),
        "tts": {
            "codec_weights": str(codec / "weights.safetensors"),
            "codec_model": str(codec / "config.json"),
            "tokens_dir": str(tmp_path / "tokens"),
            "max_frames": 64,
            "max_text_length": 32,
            "eval_examples": 2,
            "top_k": 4,
        },
        "optimizer": {"lr": 1e-3, "warmup_steps": 0},
        "train": {"steps": 2, "log_every": 1, "eval_every": 2, "checkpoint_every": 2, "async_checkpointing": False},
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            base.setdefault(name, {}).update(values)
        else:
            base[name] = values
    return config_lib.parse(base)


@pytest.mark.slow
@pytest.mark.parametrize("group_size,word_alignment", [(1, False), (2, False), (2, True)])
def test_valle_trains_evaluates_and_speaks(tone_corpus, fixtures_dir, tmp_path, group_size, word_alignment):
    """With group_size 2 the AR holds and predicts pairs of codes (VALL-E 2's grouped codes);
    with word_alignment it also reads each group's word and learns when the next word begins,
    and here trains and speaks with classifier-free guidance on its text."""
    args = {**TINY_VALLE, "group_size": group_size, "word_alignment": word_alignment}
    guidance = {"guidance_dropout": 0.5, "guidance_scale": 2.0} if word_alignment else {}
    cfg = tts_config(tone_corpus, fixtures_dir, tmp_path, args=args, tts={"pair_prob": 0.5, **guidance})
    workdir = tmp_path / "run"
    metrics = train(cfg, str(workdir))
    names = ("ar_loss", "ar_accuracy", "nar_loss", "nar_accuracy") + (("ar_advance_loss",) if word_alignment else ())
    for name in names:
        assert np.isfinite(metrics[f"eval/{name}"])
    assert metrics["eval/ar_loss"] < np.log(17) + 1.0
    assert sorted(os.listdir(tmp_path / "tokens")) == ["test.npz", "train.npz"]
    for i in range(2):
        for name in ("prompt", "reference", "generated"):
            audio = speech.read_audio(str(workdir / "tts" / f"{i}_{name}.wav"))
            assert len(audio) > 0
    assert (workdir / "tts_spectrograms.png").stat().st_size > 0
    if word_alignment:
        return  # the command below runs in the slow tier's cases

    # The command: text + a prompt recording -> a WAV, with the run's checkpoint.
    from trainers import tts

    out = tmp_path / "said.wav"
    command = [
        str(workdir / "config.yaml"),
        "--workdir",
        str(workdir),
        "--text",
        "two three",
        "--prompt",
        str(tone_corpus / "wav" / "test0.wav"),
        "--prompt-text",
        "one",
        "--out",
        str(out),
    ]
    tts.main(command)
    assert 0 < len(speech.read_audio(str(out))) <= 64 * 2 * 8  # at most max_frames of the 8 kHz codec's hop
    with pytest.raises(SystemExit, match="missing.wav"):
        tts.main(command[:6] + [str(tmp_path / "missing.wav")] + command[7:])
    with pytest.raises(SystemExit, match="--prompt-text"):
        tts.main(command[:7] + command[9:])


@pytest.mark.slow
@pytest.mark.parametrize("word_alignment", [False, True])
def test_valle_loss_sharded_equals_single_device(tone_corpus, fixtures_dir, tmp_path, word_alignment):
    # SGD: the step is the gradient (Adam's first step is lr * sign(g), and the attention's
    # key bias has a gradient of exactly 0 but for rounding, whose sign differs per layout).
    sgd = {"name": "sgd", "lr": 1.0, "weight_decay": 0.0, "warmup_steps": 0}
    args = {**TINY_VALLE, "group_size": 2, "word_alignment": word_alignment}  # VALL-E 2's grouped codes
    tts = {"guidance_dropout": 0.5} if word_alignment else {}  # rows drawn without their text alike
    single = Trainer(
        tts_config(tone_corpus, fixtures_dir, tmp_path, args=args, mesh={"data": 1}, optimizer=sgd, tts=tts),
        devices=jax.devices()[:1],
    )
    sharded = Trainer(
        tts_config(tone_corpus, fixtures_dir, tmp_path, args=args, mesh={"data": 4, "fsdp": 2}, optimizer=sgd, tts=tts)
    )
    source = single.task.train_source()
    rows = [single.task.train_transform(source[i], None) for i in range(8)]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    results = []
    for trainer in (single, sharded):
        state = trainer.init(0)
        with trainer.context():
            state, metrics = trainer.train_step(
                state, {k: jax.device_put(v, trainer.batch_shardings[k]) for k, v in batch.items()}
            )
        results.append((jax.device_get(metrics), jax.device_get(state.params)))
    np.testing.assert_allclose(results[0][0]["train/loss"], results[1][0]["train/loss"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), results[0][1], results[1][1])


def test_guidance_dropout_takes_the_text_from_some_rows(tone_corpus, fixtures_dir, tmp_path):
    """The unconditional rows of classifier-free guidance: no text and no words (so no
    `advance` to learn), the codes as they were; the other rows untouched."""
    args = {**TINY_VALLE, "group_size": 2, "word_alignment": True}
    task = Trainer(tts_config(tone_corpus, fixtures_dir, tmp_path, args=args, tts={"guidance_dropout": 0.3})).task
    source = task.train_source()
    rows = [task.train_transform(source[i % len(source)], None) for i in range(200)]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    dropped = jax.device_get(task._without_text(batch, jax.random.PRNGKey(0)))
    gone = dropped["text_length"] == 0
    assert 0.2 < gone.mean() < 0.4
    assert np.all(dropped["audio_words"][gone] == -1)
    for key in batch:
        np.testing.assert_array_equal(dropped[key][~gone], batch[key][~gone])
        if key not in ("text_length", "audio_words"):
            np.testing.assert_array_equal(dropped[key], batch[key])
    with pytest.raises(config_lib.ConfigError, match="tts.guidance_dropout must be in"):
        tts_config(tone_corpus, fixtures_dir, tmp_path, tts={"guidance_dropout": 1.0})
    with pytest.raises(ValueError, match="guide VALL-E's AR"):
        Trainer(
            tts_config(
                tone_corpus, fixtures_dir, tmp_path, model="delayed", args=TINY_DELAYED, tts={"guidance_scale": 2.0}
            )
        )


def test_eval_offset_speaks_later_pairs(tone_corpus, fixtures_dir, tmp_path):
    trainer = Trainer(tts_config(tone_corpus, fixtures_dir, tmp_path, tts={"eval_examples": 1, "eval_offset": 1}))
    task = trainer.task
    task.train_source()
    _, outputs = task.generate(trainer.init(0).params, trainer.mesh)
    assert outputs["tts_text"] == [task.prompt_pairs()[1][1]["target"]]
    with pytest.raises(config_lib.ConfigError, match="tts.eval_offset must be at least 0"):
        tts_config(tone_corpus, fixtures_dir, tmp_path, tts={"eval_offset": -1})


def test_pairs_join_two_utterances_of_one_voice(tone_corpus, fixtures_dir, tmp_path):
    task = Trainer(
        tts_config(
            tone_corpus, fixtures_dir, tmp_path, tts={"pair_prob": 1.0, "max_frames": 256, "max_text_length": 64}
        )
    ).task
    source, rng = task.train_source(), np.random.default_rng(0)
    for record in source[:4]:
        example = task.train_transform(record, rng)
        n, f = int(example["text_length"]), int(example["frames"])
        first = [
            r
            for r in source
            if r is not record
            and r["speaker"] == record["speaker"]
            and len(r["codes"]) == f - len(record["codes"])
            and np.array_equal(example["codes"][: len(r["codes"])], r["codes"])
        ]
        assert first, "the example does not start with another utterance of the voice"
        np.testing.assert_array_equal(
            example["text"][:n], np.concatenate([first[0]["text_ids"], [32], record["text_ids"]])
        )
        np.testing.assert_array_equal(example["codes"][f - len(record["codes"]) : f], record["codes"])
    single = task.eval_transform(source[0], rng)  # eval examples are never paired
    assert int(single["frames"]) == len(source[0]["codes"])


@pytest.mark.slow
@pytest.mark.parametrize("condition", ["text", "semantic"])
def test_delayed_lm_trains_and_speaks(tone_corpus, fixtures_dir, tmp_path, condition):
    """MusicGen's layout on text, or on the utterance's own k-means units (AudioLM's acoustic stage)."""
    semantic = {"condition": condition, "semantic_clusters": 8, "semantic_frame_rate": 100}
    cfg = tts_config(tone_corpus, fixtures_dir, tmp_path, model="delayed", args=TINY_DELAYED, tts=semantic)
    metrics = train(cfg, str(tmp_path / "run"))
    assert np.isfinite(metrics["eval/lm_loss"])
    assert len(speech.read_audio(str(tmp_path / "run" / "tts" / "0_generated.wav"))) > 0
    assert (tmp_path / "tokens" / "semantic.npz").exists() == (condition == "semantic")
    if condition == "semantic":
        # The tokenizer comes back with the checkpoint: another one saved into the tokens
        # directory since neither replaces it nor leaves stale tokens.
        from trainers.checkpoint import restore_run
        from trainers.data.semantic import SemanticTokenizer

        path = str(tmp_path / "tokens" / "semantic.npz")
        saved = SemanticTokenizer.load(path)
        trained = np.asarray(saved.centroids)
        saved.centroids = trained[::-1]
        saved.save(path)
        trainer = Trainer(cfg)
        _, state = restore_run(trainer, str(tmp_path / "run"))
        np.testing.assert_array_equal(trainer.task.semantic_tokenizer().centroids, trained)
        again, _ = trainer.evaluate_state(state)
        assert again["lm_loss"] == pytest.approx(metrics["eval/lm_loss"], rel=1e-5)


def test_codec_mismatch_and_bad_args_are_named(tone_corpus, fixtures_dir, tmp_path):
    cfg = tts_config(tone_corpus, fixtures_dir, tmp_path, args={**TINY_VALLE, "codebook_size": 32})
    trainer = Trainer(cfg)
    with pytest.raises(ValueError, match="4 codebooks of 16 .* expects 4 of 32"):
        trainer.task.train_source()
    with pytest.raises(ValueError, match="VALL-E reads text"):
        Trainer(tts_config(tone_corpus, fixtures_dir, tmp_path, tts={"condition": "semantic"}))
    with pytest.raises(ValueError, match="max_frames=64 must be a multiple of the AR's group_size 3"):
        Trainer(tts_config(tone_corpus, fixtures_dir, tmp_path, args={**TINY_VALLE, "group_size": 3}))
    with pytest.raises(ValueError, match="unknown argument.*'layers'"):
        Trainer(tts_config(tone_corpus, fixtures_dir, tmp_path, args={**TINY_VALLE, "layers": 2}))


def test_word_alignment_needs_word_starts(tone_corpus, fixtures_dir, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(tone_corpus, corpus)
    manifest = corpus / "train.jsonl"
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    del records[1]["word_starts"]
    records[2]["word_starts"] = records[2]["word_starts"] + [0.5]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = tts_config(corpus, fixtures_dir, tmp_path, args={**TINY_VALLE, "word_alignment": True})
    with pytest.raises(ValueError, match="record train1: word alignment needs word_starts"):
        Trainer(cfg).task.train_source()
    del records[1]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ValueError, match=f"record train2: .* one per word, not {len(records[1]['word_starts'])}"):
        Trainer(cfg).task.train_source()


def test_token_cache_follows_the_codec_weights_and_the_corpus(tone_corpus, fixtures_dir, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    weights = tmp_path / "codec.safetensors"
    tensors = load_file(fixtures_dir / "encodec" / "causal_mono" / "weights.safetensors")
    save_file(tensors, weights)
    cfg = tts_config(tone_corpus, fixtures_dir, tmp_path, tts={"codec_weights": str(weights)})
    Trainer(cfg).task.train_source()
    Trainer(cfg).task.train_source()
    assert "encoding again" not in capsys.readouterr().out
    save_file({k: v * 1.01 for k, v in tensors.items()}, weights)  # other weights, same file
    Trainer(cfg).task.train_source()
    assert "was made with other settings: encoding again" in capsys.readouterr().out

    other = tmp_path / "other_corpus"  # the same corpus elsewhere (moved, or seen through a link): the same tokens
    shutil.copytree(tone_corpus, other)
    Trainer(tts_config(other, fixtures_dir, tmp_path, tts={"codec_weights": str(weights)})).task.train_source()
    assert "encoding again" not in capsys.readouterr().out
    # As many utterances, one transcript changed, the same tokens_dir: another corpus.
    lines = (other / "train.jsonl").read_text().splitlines()
    lines[0] = lines[0].replace('"target": "', '"target": "x')
    (other / "train.jsonl").write_text("\n".join(lines) + "\n")
    cfg = tts_config(other, fixtures_dir, tmp_path, tts={"codec_weights": str(weights)})
    Trainer(cfg).task.train_source()
    assert "was made with other settings: encoding again" in capsys.readouterr().out


def test_speaker_embedding_of_audio_without_a_frame_is_finite(tone_corpus):
    """A generated utterance that ended at once (shorter than one 25 ms window) still scores."""
    from trainers.speaker import train_speaker_embedder

    records = speech.read_manifest(str(tone_corpus / "train.jsonl"))
    waves = [speech.read_audio(r["source"]) for r in records]
    embed, _ = train_speaker_embedder(waves, [r["speaker"] for r in records], steps=2)
    embeddings = embed([waves[0], waves[0][:160]])
    assert np.all(np.isfinite(embeddings))
