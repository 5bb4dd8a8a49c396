"""The README's main job: speech recognition, <= 5% WER on held-out voices, and the transcribe command;
and the same commands on a tenth of the corpus for a tenth of the steps (the tier CI runs)."""

import json

import pytest
from conftest import run_demo


@pytest.mark.slow  # the main job's commands, briefly: two minutes
def test_main_job_trains_evaluates_aligns_and_transcribes_briefly(tmp_path):
    workdir, corpus = tmp_path / "run", tmp_path / "corpus"
    brief = ["data.corpus_train_size=200", "data.corpus_test_size=20", "train.steps=120"]
    brief += ["train.eval_every=120", "train.log_every=20"]
    run_demo("trainers.train", "configs/ctc_speech.yaml", "--workdir", workdir, f"data.path={corpus}", *brief)
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0], losses  # it learns (from 16 to the blanks' plateau at 15)
    final = [r for r in rows if "eval/wer_greedy" in r][-1]
    assert 0 <= final["eval/wer_greedy"] <= 1 and 0 <= final["eval/wer_beam"] <= 1, final
    assert (workdir / "alignment.png").stat().st_size > 2000
    test = [json.loads(line) for line in open(corpus / "test.jsonl")][:2]
    args = ["--workdir", workdir, "--json", "--audio", *[corpus / r["source"] for r in test]]
    out = run_demo("trainers.transcribe", "configs/ctc_speech.yaml", f"data.path={corpus}", *brief, *args)
    assert [json.loads(line)["file"] for line in out.stdout.splitlines()] == [str(corpus / r["source"]) for r in test]


@pytest.mark.demo  # the demo: seven minutes
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
