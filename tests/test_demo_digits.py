"""The digits demos: MambaOut (>= 97% held-out accuracy) and DiT (guided samples the MambaOut
classifier recognises >= 80% of the time), with the evaluate and sample commands."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import DEMO_ENV, ROOT, run_demo


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo") / "digits"
    run_demo("trainers.train", "configs/mambaout_digits.yaml", "--workdir", workdir)
    return workdir


@pytest.mark.demo  # the MambaOut demo: about three CPU minutes
def test_digits_demo_and_evaluate_cli(digits_run):
    workdir = digits_run
    lines = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    final = [row for row in lines if "eval/accuracy" in row][-1]
    assert final["step"] == 400 and final["eval/accuracy"] >= 0.97, final
    for picture in ("confusion_matrix.png", "predictions.png"):
        assert (workdir / picture).stat().st_size > 1000

    out = run_demo("trainers.evaluate", "configs/mambaout_digits.yaml", "--workdir", workdir, "--checkpoint", "400")
    assert json.loads((workdir / "eval_400.json").read_text())["accuracy"] == final["eval/accuracy"]
    assert "step 400: accuracy=" in out.stdout

    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainers.train",
            "configs/mambaout_digits.yaml",
            "--workdir",
            str(workdir),
            "optimizer.learning_rate=1",
        ],
        cwd=ROOT,
        env=DEMO_ENV,
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "unknown config key optimizer.learning_rate" in bad.stderr


@pytest.mark.demo  # the DiT demo: about 8 CPU minutes
def test_dit_digits_demo_samples_what_it_is_asked_for(digits_run, tmp_path):
    workdir = tmp_path / "dit"
    run_demo(
        "trainers.train",
        "configs/dit_digits.yaml",
        "--workdir",
        workdir,
        f"evals=[{{name: classifier_agreement, run: {digits_run}}}, {{name: fid, run: {digits_run}}}]",
    )
    final = [json.loads(line) for line in open(workdir / "metrics.jsonl") if "eval/" in line][-1]
    assert final["eval/ema_classifier_agreement"] >= 0.8, final
    # In the classifier's feature space the training digits are 0.9 from the held-out ones, noise 11.8.
    assert final["eval/ema_fid"] < 5.0, final
    assert (workdir / "samples.png").stat().st_size > 1000

    out = run_demo(
        "trainers.sample",
        "configs/dit_digits.yaml",
        "--workdir",
        workdir,
        "--labels",
        "3,7",
        "--per_label",
        "4",
        "--sampler",
        "ddim",
        "--steps",
        "20",
        "--out",
        tmp_path / "s",
    )
    assert "wrote" in out.stdout
    with np.load(tmp_path / "s.npz") as f:
        assert f["samples"].shape[0] == 8 and list(f["labels"]) == [3] * 4 + [7] * 4
    assert (tmp_path / "s.png").stat().st_size > 500
