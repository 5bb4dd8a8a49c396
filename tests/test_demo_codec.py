"""The codec demo: it learns to reconstruct held-out voices; the compress command round-trips a file."""

import json

import pytest
from conftest import run_demo


@pytest.mark.demo  # the codec demo: about 10 CPU minutes
def test_codec_demo_learns_and_compresses(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("codec") / "run"
    corpus = workdir.parent / "corpus"
    run_demo("trainers.train", "configs/codec_speech.yaml", "--workdir", workdir, f"data.path={corpus}")
    final = [json.loads(line) for line in open(workdir / "metrics.jsonl") if "eval/" in line][-1]
    # An untrained codec: SI-SNR about -40 dB, mel distance about 1.5, codes of one entry;
    # this config over three seeds and a fresh corpus: 1.5 to 3.1 dB, 0.92 to 1.04, 14.7 to 15.3 bits.
    assert final["eval/si_snr_16kbps"] > -3.0, final
    assert final["eval/mel_distance_16kbps"] < min(1.3, final["eval/mel_distance_4kbps"]), final
    assert final["eval/entropy_bitrate_16kbps"] > 8.0, final
    assert (workdir / "spectrograms.png").stat().st_size > 5000
    assert len(list((workdir / "audio").glob("*.wav"))) == 3 * 4

    source = str(corpus / json.loads(open(corpus / "test.jsonl").readline())["source"])
    for args in (
        ["encode", source, str(workdir / "codes.npz"), "--bandwidth", "8"],
        ["decode", str(workdir / "codes.npz"), str(workdir / "back.wav")],
    ):
        run_demo("trainers.compress", *args, "--config", "configs/codec_speech.yaml", "--workdir", workdir)
    assert (workdir / "back.wav").stat().st_size > 1000
