"""FSMN-VAD against FunASR's own (tests/data/make_fsmn_vad_reference.py): the released
folder's layout (model.pt or model.safetensors, config.yaml, am.mvn) written from the
reference's seeded weights, its silence probabilities and FunASR's segments for four
settings over four recordings (one 60 s chunk, three, an empty last chunk, no speech)."""

import os

import numpy as np
import pytest
import yaml
from helpers.fsmn_vad_release import REFERENCE, recordings, write

from jaxmodels.asr import fsmn_vad


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write(tmp_path_factory.mktemp("fsmn_vad"))


@pytest.fixture(scope="module")
def audio():
    return recordings()


def test_fsmn_vad_silence_probabilities_equal_funasr(release, audio):
    vad = fsmn_vad.load(release)
    probs = vad.silence_probs(audio[0])
    expected = np.asarray(REFERENCE["silence_probs"])
    assert probs.shape == (598,)
    np.testing.assert_allclose(probs[: len(expected)], expected, atol=1e-4)


@pytest.mark.parametrize("setting", sorted(REFERENCE["segments"]))
def test_fsmn_vad_segments_equal_funasr(release, audio, setting):
    vad = fsmn_vad.load(release, **REFERENCE["settings"][setting])
    for wav, expected in zip(audio, REFERENCE["segments"][setting]):
        assert vad(wav) == expected


def test_fsmn_vad_reads_torch_pickles(tmp_path, audio):
    pytest.importorskip("torch")
    vad = fsmn_vad.load(write(tmp_path, "pt"))
    assert vad(audio[0]) == REFERENCE["segments"]["default"][0]


def test_fsmn_vad_bad_input(release, tmp_path):
    vad = fsmn_vad.load(release)
    assert vad(np.zeros(100, np.float32)) == []  # shorter than a frame: nothing to find
    with pytest.raises(ValueError, match="one mono recording"):
        vad(np.zeros((2, 16000), np.float32))
    with open(os.path.join(release, "config.yaml")) as f:
        conf = yaml.safe_load(f)
    conf["frontend_conf"]["lfr_m"] = 7
    folder = tmp_path / "other"
    folder.mkdir()
    for name in ("model.safetensors", "am.mvn"):
        os.symlink(os.path.join(release, name), folder / name)
    with open(folder / "config.yaml", "w") as f:
        yaml.safe_dump(conf, f)
    with pytest.raises(ValueError, match="lfr_m"):
        fsmn_vad.load(str(folder))


def test_merge_segments_as_funasr_merge_vad():
    # funasr.utils.vad_utils.merge_vad's rule: cut at the boundary before the one that
    # would take the piece from its start past max_ms; the silences stay inside the pieces.
    segments = [[100, 900], [1500, 2600], [3000, 3400], [9000, 9500]]
    assert fsmn_vad.merge_segments(segments, 2000) == [[0, 1500], [1500, 3400], [3400, 9000], [9000, 9500]]
    assert fsmn_vad.merge_segments(segments, 15000) == [[0, 9500]]
    assert fsmn_vad.merge_segments(segments[:1], 10) == [[100, 900]]
