"""The README's main job: speech recognition, <= 5% WER on held-out voices, and the transcribe command."""

import json

import pytest
from conftest import run_demo


@pytest.mark.slow  # a demo: minutes
def test_speech_demo_recognises_held_out_voices_and_transcribes(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("speech") / "run"
    corpus = workdir.parent / "corpus"
    run_demo("trainers.train", "configs/ctc_speech.yaml", "--workdir", workdir, f"data.path={corpus}")
    final = [json.loads(line) for line in open(workdir / "metrics.jsonl") if "eval/" in line][-1]
    assert final["eval/wer_greedy"] <= 0.05 and final["eval/wer_beam"] <= 0.05, final
    assert (workdir / "alignment.png").stat().st_size > 2000

    # Ten held-out utterances, seven or more exactly right: at the demo's 2-4% WER about one in
    # seven five-word utterances has an error, and four were too few to say more than noise.
    test = [json.loads(line) for line in open(corpus / "test.jsonl")][:10]
    out = run_demo(
        "trainers.transcribe",
        "configs/ctc_speech.yaml",
        "--workdir",
        workdir,
        "--json",
        "--audio",
        *[corpus / r["source"] for r in test],
    )
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["file"] for r in results] == [str(corpus / r["source"]) for r in test]
    right = sum(r["text"] == t["target"] for r, t in zip(results, test))
    assert right >= 7, [(r["text"], t["target"]) for r, t in zip(results, test)]
    for r in results:  # one span per word, in order, inside the audio
        starts = [token["start"] for token in r["tokens"]]
        assert len(r["tokens"]) == len(r["text"].split()) and starts == sorted(starts) and starts[-1] < 3.0
