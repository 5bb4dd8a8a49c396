"""Evaluator plug-ins: built from the config's evals, helpers loaded (never trained), due at
their own interval; metric modules as the families use them."""

import numpy as np
import pytest
from conftest import tiny_config

from trainers import evaluators
from trainers.config import ConfigError, EvalConfig
from trainers.data import speech
from trainers.evaluators import fidelity
from trainers.evaluators.accuracy import accuracies
from trainers.evaluators.speaker_similarity import SpeakerSimilarity, SpeakerSimilarityConfig
from trainers.loop import Trainer, train
from trainers.speaker import SpeakerEmbedder, train_speaker_embedder


def test_top_k_accuracies():
    top = np.array([[1, 2, 3, 4, 5], [0, 9, 8, 7, 6], [3, 1, 2, 0, 4]])
    assert accuracies(top, np.array([1, 6, 9])) == {"accuracy": 1 / 3, "top5_accuracy": 2 / 3}


def test_codec_fidelity():
    rng = np.random.default_rng(0)
    audio = rng.normal(size=(2, 4000)).astype(np.float32)
    lengths = np.array([4000, 2500])
    noisy = audio + 0.1 * rng.normal(size=audio.shape).astype(np.float32)
    noisy[1, 2500:] = 5.0  # padding: left out of both
    np.testing.assert_allclose(fidelity.si_snr(noisy, audio, lengths), 20.0, atol=0.5)
    distances = fidelity.mel_distances({"same": audio, "noisy": noisy}, audio, lengths, 16000, 40, 0.0)
    assert np.all(np.asarray(distances["same"]) == 0) and np.all(np.asarray(distances["noisy"]) > 0)

    # Uniform over 4 of 16 bins: 2 bits a frame; a constant codebook: none. Frames past a row's length are left out.
    codes = np.stack([np.tile([0, 1, 2, 3], 8), np.zeros(32, int)])[None].repeat(2, 0)
    codes[1, :, 16:] = 9
    entropies = fidelity.codebook_entropies(codes, np.array([32, 16]), bins=16)
    np.testing.assert_allclose(entropies, [2.0, 0.0])
    assert fidelity.bitrates(entropies, 1, 16, frame_rate=75) == {"bitrate": 0.3, "entropy_bitrate": 0.15}


def test_an_evaluator_is_due_at_its_interval_and_at_the_end():
    every = EvalConfig(name="x", every=100)
    assert [s for s in (50, 100, 150, 200) if evaluators.due(every, s, final=False)] == [100, 200]
    assert evaluators.due(every, 150, final=True) and evaluators.due(EvalConfig(name="x"), 7, final=False)


def test_a_missing_helper_run_names_the_command_that_makes_it(tmp_path):
    cfg = tiny_config(evals=[{"name": "classifier_agreement", "run": str(tmp_path / "digits")}])
    trainer = Trainer(cfg)  # builds without its evaluators
    with pytest.raises(ConfigError, match=r"train it first: python -m trainers.train CONFIG.yaml --workdir .*digits"):
        trainer.evaluators()
    with pytest.raises(ConfigError, match="train it first"):
        train(cfg, str(tmp_path / "run"))  # before any step
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
    """A classification run on the digits (30 steps), for the plug-ins that score samples with it."""
    classifier = tmp_path_factory.mktemp("digits")
    train(tiny_config(train={"steps": 30, "eval_every": 30, "checkpoint_every": 30}), str(classifier))
    return classifier


@pytest.mark.slow
def test_classifier_agreement_scores_a_trained_classifier(digits_classifier):
    """Held-out digits given as samples in [-1, 1]: the plug-in's predictions are the classifier's."""
    trainer = Trainer(tiny_config(evals=[{"name": "classifier_agreement", "run": str(digits_classifier)}]))
    ((_, agreement),) = trainer.evaluators()
    source = trainer.task.eval_source()
    rows = [trainer.task.eval_transform(source[i], np.random.default_rng(0)) for i in range(32)]
    images, labels = np.stack([r["image"] for r in rows]), np.array([r["label"] for r in rows])
    metrics, outputs = agreement({"samples": images / 127.5 - 1.0, "sample_labels": labels}, {})
    expected = np.asarray(agreement.predict(agreement.params, images))
    np.testing.assert_array_equal(outputs["sample_predictions"], expected)
    assert metrics["classifier_agreement"] == np.mean(expected == labels) > 0.2  # 10 classes


def test_speaker_similarity_round_trips_its_embedder(tone_corpus, tmp_path):
    records = speech.read_manifest(str(tone_corpus / "train.jsonl"))
    waves = [speech.read_audio(r["source"]) for r in records]
    embedder, accuracy = train_speaker_embedder(waves, [r["speaker"] for r in records], steps=20)
    embedder.save(str(tmp_path / "speaker.npz"))
    again = SpeakerEmbedder.load(str(tmp_path / "speaker.npz"))
    np.testing.assert_allclose(again(waves[:4]), embedder(waves[:4]), rtol=1e-6)
    plugin = SpeakerSimilarity(
        SpeakerSimilarityConfig(name="speaker_similarity", weights=str(tmp_path / "speaker.npz")), None
    )
    metrics, _ = plugin({"tts_prompt": waves[:4], "tts_generated": waves[:4], "tts_reference": waves[4:8]}, {})
    assert metrics["speaker_similarity"] == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= metrics["speaker_similarity_reference"] <= 1.0
    with pytest.raises(Exception, match="python -m trainers.speaker"):
        SpeakerEmbedder.load(str(tmp_path / "missing.npz"))


@pytest.mark.slow
def test_fid_in_a_classifiers_feature_space(digits_classifier):
    """evals: fid with a classification run on the digits: the held-out digits scored as
    samples are at distance 0 from themselves (the reference: the task's evaluation split),
    noise is far; the number is the Frechet distance of the classifier's pooled features."""
    from jaxmodels import inception
    from trainers import config as config_lib

    classifier = digits_classifier
    model = {
        "name": "DiT-S/2",
        "args": {"input_size": 8, "in_channels": 1, "hidden_size": 32, "depth": 1, "num_heads": 2},
    }
    cfg = {
        "task": "diffusion",
        "model": model,
        "data": {"source": "digits", "image_size": 8, "batch_size": 16, "eval_batch_size": 16},
        "evals": [{"name": "fid", "run": str(classifier)}],
    }
    trainer = Trainer(config_lib.parse(cfg))
    ((_, fid),) = trainer.evaluators()
    source = trainer.task.eval_source()
    real = np.stack([trainer.task.eval_transform(source[i], None)["x"] for i in range(len(source))])
    assert real.shape == (359, 8, 8, 1)
    assert fid({"samples": real}, {})[0]["fid"] == pytest.approx(0.0, abs=1e-3)
    noise = np.random.default_rng(0).uniform(-1, 1, real.shape)
    far = fid({"samples": noise}, {})[0]["fid"]
    features = fid.features(np.clip(127.5 * noise + 128, 0, 255).astype(np.uint8).repeat(3, -1))["pool"]
    assert far == pytest.approx(inception.frechet_distance(*inception.statistics(features), *fid.stats[0]), rel=1e-6)
    assert far > 1.0

    for keys in ({}, {"run": str(classifier), "inception": "x.pth"}):
        with pytest.raises(ConfigError, match="evals: fid needs inception"):
            Trainer(config_lib.parse({**cfg, "evals": [{"name": "fid", **keys}]})).evaluators()
