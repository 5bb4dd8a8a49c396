"""A run directory survives what users do to it: reruns with another config, damaged
checkpoints, a second trainer, unwritable folders, errors mid-run, a finished run rerun."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from conftest import tiny_config

from trainers import checkpoint, rundir
from trainers.loop import train

CFG = tiny_config(
    train={"steps": 4, "log_every": 1, "eval_every": 4, "checkpoint_every": 2, "async_checkpointing": True}
)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("base")
    metrics = train(CFG, str(workdir))
    return workdir, metrics


@pytest.fixture
def run(base_run, tmp_path):
    """A copy of the finished 4-step run (checkpoints 2 and 4)."""
    copy = tmp_path / "run"
    shutil.copytree(base_run[0], copy)
    return copy


def snapshot(workdir):
    """Every file's bytes under workdir (but the lock file, whose holder line changes)."""
    files = {}
    for dirpath, _, names in os.walk(workdir):
        for name in names:
            path = os.path.join(dirpath, name)
            if name != ".lock":
                files[os.path.relpath(path, workdir)] = open(path, "rb").read()
    return files


def damage(step_dir):
    for dirpath, _, names in os.walk(step_dir / "state"):
        for name in names:
            with open(os.path.join(dirpath, name), "r+b") as f:
                f.truncate(3)


def test_another_config_is_an_error_that_touches_nothing(run):
    before = snapshot(run)
    ema = tiny_config(optimizer={"ema_decay": 0.999}, train={**CFG.train.__dict__, "steps": 50})
    with pytest.raises(rundir.ConfigChanged, match=r"optimizer.ema_decay: 0.0 -> 0.999; train.steps: 4 -> 50"):
        train(ema, str(run))
    assert snapshot(run) == before
    # Allowed, the change still cannot load the checkpoint's state: an error naming the keys.
    with pytest.raises(checkpoint.CheckpointMismatch, match=r"not in the checkpoint: ema_params/.*ema_decay"):
        train(ema, str(run), allow_config_change=True)
    assert snapshot(run) == before
    wider = tiny_config(model={"args": {"depths": [1, 1, 1, 1], "dims": [8, 16, 16, 64]}}, train=CFG.train.__dict__)
    with pytest.raises(checkpoint.CheckpointMismatch, match=r"float32\[32\] in the checkpoint, float32\[64\] here"):
        train(wider, str(run), allow_config_change=True)
    assert snapshot(run) == before


def test_allowed_config_change_resumes_and_keeps_the_old_config(run):
    longer = tiny_config(train={**CFG.train.__dict__, "steps": 6})
    metrics = train(longer, str(run), allow_config_change=True)
    assert np.isfinite(metrics["eval/accuracy"])
    assert "steps: 4" in (run / "config.step4.yaml").read_text()
    assert "steps: 6" in (run / "config.yaml").read_text()
    assert sorted(os.listdir(run / "checkpoints")) == ["2", "4", "6"]
    train_steps = [r["step"] for r in map(json.loads, open(run / "metrics.jsonl")) if "train/loss" in r]
    assert train_steps == [1, 2, 3, 4, 5, 6]


def test_damaged_newest_checkpoint_is_moved_aside_and_the_run_goes_on(run, base_run):
    damage(run / "checkpoints" / "4")
    with pytest.warns(
        UserWarning, match="unreadable checkpoint .*checkpoints/4 .* moved to .*checkpoints-unreadable/4-"
    ):
        metrics = train(CFG, str(run))
    assert sorted(os.listdir(run / "checkpoints")) == ["2", "4"]
    (aside,) = os.listdir(run / "checkpoints-unreadable")
    assert aside.startswith("4-")
    # Resumed from step 2, the run ends as it did the first time.
    assert metrics == pytest.approx(base_run[1], rel=1e-6)
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]  # steps 3 and 4 once each
    # A finished run trained again says where it ended.
    assert train(CFG, str(run)) == pytest.approx(base_run[1], rel=1e-6)


def test_no_readable_checkpoint_stops_unless_told_to_start_fresh(run):
    for step in ("2", "4"):
        damage(run / "checkpoints" / step)
    before = snapshot(run)
    with pytest.raises(checkpoint.NoReadableCheckpoint, match="no checkpoint in .* can be read .*--start-fresh"):
        train(CFG, str(run))
    assert snapshot(run) == before
    with pytest.warns(UserWarning, match="moved to"):
        metrics = train(CFG, str(run), start_fresh=True)
    assert np.isfinite(metrics["eval/accuracy"])
    assert len(os.listdir(run / "checkpoints-unreadable")) == 2


def test_a_second_trainer_on_a_workdir_is_an_error_naming_the_first(run):
    with rundir.WorkdirLock(str(run)):
        with pytest.raises(rundir.WorkdirBusy, match=f"in use by pid {os.getpid()} on "):
            train(CFG, str(run))
    train(CFG, str(run))  # released


def test_unwritable_checkpoints_fail_at_once(tmp_path):
    (tmp_path / "checkpoints").write_text("a file where the folder should be")
    with pytest.raises(OSError, match="cannot write checkpoints to .*checkpoints"):
        train(CFG, str(tmp_path))


def test_an_error_mid_run_completes_the_save_in_flight(tmp_path, monkeypatch):
    save = checkpoint.Checkpointer.save

    def save_then_fail(self, step, *args, **kwargs):
        save(self, step, *args, **kwargs)
        if step == 2:
            raise RuntimeError("failure after a save")

    monkeypatch.setattr(checkpoint.Checkpointer, "save", save_then_fail)
    with pytest.raises(RuntimeError, match="failure after a save"):
        train(CFG, str(tmp_path))
    assert os.listdir(tmp_path / "checkpoints") == ["2"]  # complete: no orbax-checkpoint-tmp left
    assert checkpoint.Checkpointer(str(tmp_path / "checkpoints"), read_only=True).steps() == [2]


@pytest.mark.slow
def test_a_nonfinite_step_is_never_applied(tmp_path):
    # A learning rate of 1e30 sends the params to about 1e30 after step 1; step 2 overflows.
    huge = tiny_config(optimizer={"name": "sgd", "lr": 1e30, "warmup_steps": 0}, train=CFG.train.__dict__)
    with pytest.raises(FloatingPointError, match="step 2: the loss or a gradient norm is not finite"):
        train(huge, str(tmp_path / "error"))
    step, state, _, _ = checkpoint.Checkpointer(str(tmp_path / "error" / "checkpoints")).restore(
        __import__("trainers.loop").loop.Trainer(huge).abstract_state
    )
    assert step == 2 and all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.params)))

    skip = tiny_config(optimizer=huge.optimizer.__dict__, train={**CFG.train.__dict__, "on_nonfinite": "skip"})
    metrics = train(skip, str(tmp_path / "skip"))
    assert "eval/loss" in metrics
    rows = [json.loads(line) for line in open(tmp_path / "skip" / "metrics.jsonl")]
    assert [r["train/nonfinite"] for r in rows if "train/loss" in r] == [0.0, 1.0, 1.0, 1.0]


def test_keys_added_since_a_run_was_written_are_not_changes():
    import yaml

    from trainers import config as config_lib

    saved = yaml.safe_load(config_lib.dump(CFG))
    del saved["train"]["on_nonfinite"]  # a run written before the key existed
    assert rundir.config_changes(saved, CFG) == []
    saved["optimizer"]["lr"] = 0.5
    assert rundir.config_changes(saved, CFG) == [f"optimizer.lr: 0.5 -> {CFG.optimizer.lr}"]
