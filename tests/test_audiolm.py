"""AudioLM's stages: flattening, a row's loss independent of the batch's padding, and cached
generation equal to the full forward pass with the codebook turns."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, manifest_data

from jaxmodels.speechlm import audiolm

TINY = dict(bins=5, codebooks=2, prefix_bins=7, prefix_codebooks=1, num_layers=2, num_heads=2, dim=16, ffn_dim=32)


def _model_and_params():
    model = audiolm.StageLM(**TINY, dropout=0.0)
    args, _ = model.example()
    return model, model.init(jax.random.PRNGKey(0), *args)["params"]


def test_flatten_round_trip():
    codes = jnp.asarray(np.random.default_rng(0).integers(0, 5, (2, 3, 4)))
    tokens = audiolm.flatten(codes, 5)
    assert tokens[0, :4].tolist() == (codes[0, 0] + jnp.array([0, 5, 10, 15])).tolist()
    np.testing.assert_array_equal(audiolm.unflatten(tokens, 4, 5), codes)


def test_a_rows_loss_ignores_the_batchs_padding():
    model, params = _model_and_params()
    rng = np.random.default_rng(0)
    prefix = jnp.asarray(rng.integers(0, 7, (2, 6)))
    target = jnp.asarray(rng.integers(0, 10, (2, 8)))
    loss = jax.jit(audiolm.loss, static_argnums=0)
    batch = loss(model, params, prefix, jnp.array([3, 6]), target, jnp.array([5, 8]))
    alone = loss(model, params, prefix[:1, :3], jnp.array([3]), target[:1, :5], jnp.array([5]))
    other = loss(model, params, prefix[1:], jnp.array([6]), target[1:], jnp.array([8]))
    np.testing.assert_allclose(batch[0], np.concatenate([alone[0], other[0]]), rtol=1e-5)
    assert batch[1].tolist() == [5, 8]


def test_cached_generation_equals_the_full_forward():
    """Greedy tokens from the cache are the argmax of the full forward over [prefix, SEP, prompt,
    tokens so far], restricted to the codebook whose turn it is, for rows of different lengths."""
    model, params = _model_and_params()
    rng = np.random.default_rng(1)
    prefix, prefix_lengths = jnp.asarray(rng.integers(0, 7, (2, 5))), jnp.array([5, 2])
    prompt, prompt_lengths = jnp.asarray(rng.integers(0, 10, (2, 4))), jnp.array([3, 4])
    forward = jax.jit(model.apply)
    new = audiolm.generate(
        model,
        params,
        prefix,
        prefix_lengths,
        prompt,
        prompt_lengths,
        jax.random.PRNGKey(0),
        max_new_tokens=5,
        temperature=0.0,
    )
    for r in range(2):
        p, n = int(prefix_lengths[r]), int(prompt_lengths[r])
        target = list(np.asarray(prompt[r, :n]))
        for _ in range(5):
            tokens = np.concatenate([prefix[r, :p], [model.sep], np.array(target, int) + model.prefix_vocab])
            positions = np.arange(len(tokens))
            logits = forward({"params": params}, tokens[None], positions[None], np.ones((1, len(tokens)), bool))
            turn = len(target) % model.codebooks
            target.append(
                turn * model.bins + int(np.argmax(logits[0, -1, turn * model.bins : (turn + 1) * model.bins]))
            )
        assert np.asarray(new[r]).tolist() == target[n:]


@pytest.fixture(scope="module")
def extracted(tone_corpus, tmp_path_factory):
    """The tone corpus's units (the tiny HuBERT of tests/data/ssl_reference.npz at 800 Hz, 4
    clusters) and codes (the small SpeechTokenizer of tests/data/speechtokenizer_reference.npz:
    3 codebooks of 32 at 2000 Hz), written by trainers.extract."""
    from safetensors.numpy import save_file

    from trainers import extract

    root = tmp_path_factory.mktemp("audiolm")
    (root / "hubert").mkdir()
    with np.load(ROOT / "tests" / "data" / "ssl_reference.npz") as f:
        case = "hubert_base_layout"
        weights = {k.split("/sd/")[1]: f[k] for k in f.files if k.startswith(f"{case}/sd/")}
        save_file(weights, str(root / "hubert" / "model.safetensors"))
        (root / "hubert" / "config.json").write_text(str(f[f"{case}/config"]))
    with np.load(ROOT / "tests" / "data" / "speechtokenizer_reference.npz") as f:
        save_file(
            {k[7:]: np.ascontiguousarray(f[k]) for k in f.files if k.startswith("elu/sd/")},
            str(root / "st.safetensors"),
        )
        (root / "st.json").write_text(str(f["elu/config"]))
    data = manifest_data(tone_corpus)
    (root / "data.yaml").write_text(json.dumps({"task": "audiolm", "data": data}))
    common = ["--splits", "train,test", "--batch_size", "8"]
    extract.main(
        ["units", str(root / "data.yaml"), "--encoder", str(root / "hubert" / "model.safetensors")]
        + ["--layer", "1", "--clusters", "4", "--workdir", str(root / "units"), *common]
    )
    extract.main(
        ["codes", str(root / "data.yaml"), "--codec", str(root / "st.safetensors")]
        + ["--codec_model", str(root / "st.json"), "--workdir", str(root / "codes"), *common]
    )
    return data, str(root / "units"), str(root / "codes")


def stage_config(extracted, stage, **audiolm_keys):
    from trainers import config as config_lib

    data, units, codes = extracted
    return config_lib.parse(
        {
            "task": "audiolm",
            "model": {"name": "audiolm_stage", "args": {"num_layers": 1, "num_heads": 2, "dim": 16, "ffn_dim": 32}},
            "data": data,
            "audiolm": {"stage": stage, "units": units, "codes": codes, "window_seconds": 0.02, **audiolm_keys},
            "optimizer": {"name": "adam", "lr": 1e-2, "schedule": "constant", "weight_decay": 0.0},
            "train": {
                "steps": 4,
                "log_every": 2,
                "eval_every": 4,
                "checkpoint_every": 4,
                "async_checkpointing": False,
            },
        }
    )


@pytest.mark.slow
def test_extracted_codes_are_the_codecs(extracted, tone_corpus):
    """A record's codes in the shards equal the codec's encode of the utterance alone, but for
    the last frames, which see the batch's zero padding instead of the reflection."""
    from jaxmodels.codec import speechtokenizer
    from trainers.data import speech
    from trainers.data.extracted import ExtractedFrames

    _, _, codes = extracted
    frames = ExtractedFrames(f"{codes}/test")
    assert frames.what == "codes" and frames.width() == 3 and frames.frame_rate == 2000 and len(frames) == 6
    with np.load(ROOT / "tests" / "data" / "speechtokenizer_reference.npz") as f:
        st = speechtokenizer.from_torch(
            {k[7:]: f[k] for k in f.files if k.startswith("elu/sd/")}, json.loads(str(f["elu/config"]))
        )
    audio = speech.read_audio(str(tone_corpus / "wav" / "test0.wav"))
    alone = np.asarray(st.encode(audio[None, :, None]))[0].T
    assert frames["test0"].shape == alone.shape
    np.testing.assert_array_equal(frames["test0"][:-8], alone[:-8])


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["semantic", "coarse", "fine"])
def test_each_stage_trains_and_evaluates(extracted, stage, tmp_path):
    from trainers.loop import Trainer, train

    cfg = stage_config(extracted, stage, coarse_quantizers=1)
    task = Trainer(cfg).task
    example = task.eval_transform(task.eval_source()[0], np.random.default_rng(0))
    sizes = {"semantic": (1, 16), "coarse": (16, 40), "fine": (40, 80)}[stage]
    assert (len(example["prefix"]), len(example["target"])) == sizes
    if stage == "fine":  # the prefix is codebook 0 of each frame, the target codebooks 1 and 2 after it
        codes = task.folders["test"]["codes"][task.eval_source()[0]["key"]][:40]
        np.testing.assert_array_equal(example["prefix"], codes[:, 0])
        np.testing.assert_array_equal(example["target"].reshape(40, 2), codes[:, 1:] + np.array([0, 32]))
    metrics = train(cfg, str(tmp_path / "run"))
    vocab = {"semantic": 4, "coarse": 32, "fine": 64}[stage]
    assert 0 < metrics["eval/accuracy"] <= 1 and 1 < metrics["eval/perplexity"] < 2 * vocab


@pytest.mark.slow
def test_stage_errors(extracted):
    from trainers.config import ConfigError
    from trainers.loop import Trainer

    data, units, codes = extracted
    with pytest.raises(ConfigError, match="audiolm.codes: the coarse stage reads the codes"):
        Trainer(stage_config((data, units, None), "coarse"))
    with pytest.raises(ConfigError, match="audiolm.coarse_quantizers: 3; the codes have 3"):
        Trainer(stage_config(extracted, "fine", coarse_quantizers=3))
    with pytest.raises(ConfigError, match="not k-means units"):
        Trainer(stage_config((data, codes, codes), "semantic"))


@pytest.mark.slow
def test_continue_speech_chains_the_three_stages(extracted, tone_corpus, tmp_path):
    """A prompt's units and codes through semantic, coarse and fine runs and the codec: the
    output holds the prompt's frames and then the continuation's; the acoustic_consistency
    evaluator continues prompts alike and names their speakers."""
    from trainers import continue_speech
    from trainers.data import speech
    from trainers.loop import train

    runs = {}
    for stage in ("semantic", "coarse", "fine"):
        runs[stage] = str(tmp_path / stage)
        train(stage_config(extracted, stage, coarse_quantizers=1), runs[stage])
    prompt = str(tone_corpus / "wav" / "test1.wav")
    out = str(tmp_path / "more.wav")
    continue_speech.main([prompt, out, "--seconds", "0.01", *[f"--{s}={r}" for s, r in runs.items()]])
    frames = -(-len(speech.read_audio(prompt)) // 8) + 20  # 2000 Hz codes: the prompt's, then 0.01 s more
    assert len(speech.read_audio(out)) == frames * 8
    with pytest.raises(SystemExit, match="is a coarse stage"):
        continue_speech.main(
            [prompt, out, "--semantic", runs["coarse"], "--coarse", runs["coarse"], "--fine", runs["fine"]]
        )

    # Acoustic consistency: the fine run's eval continues the eval split's prompts the same way
    # (greedy here: as the command's) and names each continuation's speaker.
    from pathlib import Path

    from trainers import speaker
    from trainers.evaluators import acoustic_consistency
    from trainers.runs import load_run

    embedder = str(tmp_path / "speaker.npz")
    speaker.main([str(Path(extracted[1]).parent / "data.yaml"), "--out", embedder, "--steps", "5"])
    cfg = acoustic_consistency.AcousticConsistencyConfig(
        "acoustic_consistency", semantic=runs["semantic"], coarse=runs["coarse"], speaker=embedder
    )
    cfg.seconds, cfg.temperature = 0.05, 0.0  # 0.05 s: the embedder's frames need 25 ms
    trainer, params = load_run(runs["fine"], "audiolm", "fine stage")
    evaluator = acoustic_consistency.AcousticConsistency(cfg, trainer.task)
    first = evaluator.pairs[0][0]["source"]
    continue_speech.main(
        [first, out, "--seconds", "0.01", "--temperature", "0", *[f"--{s}={r}" for s, r in runs.items()]]
    )
    written = speech.read_audio(out)
    continued = evaluator.continuations(params)
    assert len(continued) == len(evaluator.pairs) >= 2
    np.testing.assert_allclose(continued[0], written[len(written) - len(continued[0]) :], atol=1 / 32768)
    metrics, _ = evaluator({}, params)
    right = np.arange(len(evaluator.pairs))
    assert metrics["acoustic_consistency"] == np.mean(evaluator.named(continued) == right)
    assert 0 <= metrics["acoustic_consistency_reference"] <= 1
    own = (evaluator.embed(continued) * evaluator.enrolled).sum(-1)  # unit embeddings: the cosines
    np.testing.assert_allclose(metrics["acoustic_consistency_similarity"], np.mean(own), rtol=1e-5)
    assert -1 <= metrics["acoustic_consistency_similarity_reference"] <= 1


def test_swuggy_scores_words_against_non_words_in_held_out_voices(extracted):
    """The lexical pairs: the vocabulary's words in turn, each beside a non-word said otherwise, in
    a held-out voice; tokenized as the units were (deduplicated) and scored by the stage as each
    utterance alone."""
    from trainers.config import ConfigError
    from trainers.data import speech
    from trainers.evaluators import swuggy
    from trainers.loop import Trainer
    from trainers.tasks.audiolm import deduplicate

    trainer = Trainer(stage_config(extracted, "semantic"))
    params = trainer.init(0).inference_params
    evaluator = swuggy.SWuggy(swuggy.SWuggyConfig(name="swuggy", pairs=6), trainer.task)
    pairs, words = evaluator.pairs, swuggy.vocabulary()
    assert [p["word"] for p in pairs] == words[:6] and len(words) == 29
    assert all(p["non_word"] not in words and p["voice"] in speech.corpus_voices(0)[1] for p in pairs)
    metrics, _ = evaluator({}, params)
    assert metrics["swuggy_pairs"] == 6

    assert evaluator.units.max() < 4 and (evaluator.lengths > 0).all()  # the 4 k-means units, deduplicated
    loss = jax.jit(audiolm.loss, static_argnums=0)
    preferred = []
    for word, non_word in zip(*[iter(zip(evaluator.units, evaluator.lengths))] * 2):
        scores = []
        for units, n in (word, non_word):
            assert (units[:n][1:] != units[:n][:-1]).all() and not units[n:].any()
            nll, _, _ = loss(trainer.task.model, params, jnp.zeros((1, 1), jnp.int32), jnp.zeros(1, jnp.int32),
                             jnp.asarray(units[None, :n]), jnp.array([n]))  # fmt: skip
            scores.append(float(nll[0]))
        preferred.append(scores[0] < scores[1])
    assert metrics["swuggy_accuracy"] == np.mean(preferred)
    units = trainer.task.folders[trainer.cfg.data.train_split]["units"]
    counts = 1 + sum(np.bincount(deduplicate(units[key]), minlength=4) for key in units)
    unigram = [np.log(counts / counts.sum())[u[:n]].sum() for u, n in zip(evaluator.units, evaluator.lengths)]
    assert metrics["swuggy_unigram_accuracy"] == np.mean(np.array(unigram[::2]) > np.array(unigram[1::2]))
    with pytest.raises(ConfigError, match="swuggy scores an AudioLM semantic stage"):
        swuggy.SWuggy(
            swuggy.SWuggyConfig(name="swuggy"), Trainer(stage_config(extracted, "fine", coarse_quantizers=1)).task
        )
