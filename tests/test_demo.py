"""The README's main job: the digits demo trains to >= 97% held-out accuracy and draws its pictures."""
import json
import os
import subprocess
import sys

from conftest import ROOT


def test_digits_demo_and_evaluate_cli(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workdir = tmp_path / "digits"
    subprocess.run(
        [sys.executable, "-m", "trainers.train", "configs/mambaout_digits.yaml", "--workdir", str(workdir)],
        check=True, cwd=ROOT, env=env, capture_output=True,
    )
    lines = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
    final = [l for l in lines if "eval/accuracy" in l][-1]
    assert final["step"] == 400 and final["eval/accuracy"] >= 0.97, final
    for picture in ("confusion_matrix.png", "predictions.png"):
        assert (workdir / picture).stat().st_size > 1000

    out = subprocess.run(
        [sys.executable, "-m", "trainers.evaluate", "configs/mambaout_digits.yaml", "--workdir", str(workdir),
         "--checkpoint", "400"],
        check=True, cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert json.loads((workdir / "eval_400.json").read_text())["accuracy"] == final["eval/accuracy"]
    assert "step 400: accuracy=" in out.stdout

    bad = subprocess.run(
        [sys.executable, "-m", "trainers.train", "configs/mambaout_digits.yaml", "--workdir", str(workdir),
         "optimizer.learning_rate=1"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert bad.returncode != 0 and "unknown config key optimizer.learning_rate" in bad.stderr
