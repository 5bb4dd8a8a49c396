import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import yaml
from conftest import ROOT, run, tiny_config

from trainers import config as config_lib
from trainers.checkpoint import Checkpointer
from trainers.loop import Trainer, train


def tensorboard_scalars(path) -> dict:
    """{(step, tag): value} of an event file, read with tensorboardX's protocol buffers and CRC-32C."""
    import struct

    from tensorboardX.crc32c import crc32c
    from tensorboardX.proto.event_pb2 import Event

    def masked(data):
        crc = crc32c(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    data, scalars, at = path.read_bytes(), {}, 0
    while at < len(data):
        header = data[at : at + 8]
        (length,), (header_crc,) = struct.unpack("<Q", header), struct.unpack("<I", data[at + 8 : at + 12])
        body = data[at + 12 : at + 12 + length]
        (body_crc,) = struct.unpack("<I", data[at + 12 + length : at + 16 + length])
        assert header_crc == masked(header) and body_crc == masked(body)
        event = Event.FromString(body)
        if at == 0:
            assert event.file_version == "brain.Event:2"
        scalars.update({(event.step, v.tag): v.simple_value for v in event.summary.value})
        at += 16 + length
    return scalars


def final_params(cfg, workdir, step=None):
    trainer = Trainer(cfg)
    restored = Checkpointer(os.path.join(workdir, "checkpoints")).restore(trainer.abstract_state, step)
    return restored[0], jax.device_get(restored[1].params)


@pytest.mark.slow  # two full training processes
def test_sigkill_and_resume_is_bitwise_identical(tmp_path):
    cfg = tiny_config(
        data={"image_size": 32, "batch_size": 64},
        model={"args": {"depths": [1, 1, 2, 1], "dims": [16, 32, 48, 64]}},
        train={"steps": 12, "checkpoint_every": 4, "log_every": 1, "eval_every": 100, "async_checkpointing": True},
    )
    config_path = tmp_path / "c.yaml"
    config_path.write_text(config_lib.dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def cmd(workdir):
        return [sys.executable, "-m", "trainers.train", str(config_path), "--workdir", str(workdir)]

    run(cmd(tmp_path / "straight"), env)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900  # a busy machine is slow to start jax and compile
    while not (killed / "checkpoints" / "4").is_dir():
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.time() < deadline, "no checkpoint within 900 s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    steps_at_kill = sorted(int(p) for p in os.listdir(killed / "checkpoints") if p.isdigit())
    assert steps_at_kill and steps_at_kill[-1] < 12, steps_at_kill

    resumed = run(cmd(killed), env)
    assert f"resumed from {killed / 'checkpoints'}/{steps_at_kill[-1]}" in resumed.stdout

    step_a, a = final_params(cfg, tmp_path / "straight")
    step_b, b = final_params(cfg, killed)
    assert step_a == step_b == 12
    assert jax.tree.all(jax.tree.map(np.array_equal, a, b))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    cfg = tiny_config(mesh={"data": 8})
    train(cfg, str(workdir))
    return cfg, workdir


def test_restore_onto_another_mesh(trained):
    cfg, workdir = trained
    step, params = final_params(cfg, workdir)
    other = tiny_config(mesh={"data": 2, "fsdp": 2, "tensor": 2})
    trainer = Trainer(other)
    _, state, _, _ = Checkpointer(os.path.join(workdir, "checkpoints")).restore(trainer.abstract_state)
    assert jax.tree.all(jax.tree.map(np.array_equal, jax.device_get(state.params), params))
    for leaf, sharding in zip(jax.tree.leaves(state.params), jax.tree.leaves(trainer.param_shardings)):
        assert leaf.sharding == sharding


def test_inference_restore_reads_no_optimizer_state(trained):
    """restore_run (every inference command's) reads params, model state, EMA and step only."""
    from trainers.checkpoint import restore_run

    cfg, workdir = trained
    step, params = final_params(cfg, workdir)
    got_step, state = restore_run(Trainer(cfg), str(workdir))
    assert (got_step, int(state.step)) == (step, step)
    assert state.opt_state is None
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), params)
    wider = tiny_config(model={"name": "mambaout_femto", "args": {"depths": [1, 1, 1, 1], "dims": [8, 16, 16, 48]}})
    with pytest.raises(SystemExit, match="does not fit this config's state: .*params/"):
        restore_run(Trainer(wider), str(workdir))


def test_corrupt_latest_checkpoint_is_skipped(trained, tmp_path):
    cfg, workdir = trained
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    ckpt_dir = copy / "checkpoints"
    assert sorted(os.listdir(ckpt_dir)) == ["2", "4"]
    for dirpath, _, files in os.walk(ckpt_dir / "4" / "state"):
        for f in files:
            with open(os.path.join(dirpath, f), "r+b") as fh:
                fh.truncate(3)
    (ckpt_dir / "6.orbax-checkpoint-tmp-123").mkdir()  # a save that never finished
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint .*checkpoints/4"):
        step, _ = final_params(cfg, copy)
    assert step == 2


def test_train_writes_metrics_config_and_pictures(trained):
    cfg, workdir = trained
    import json

    lines = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    train_line = next(row for row in lines if "train/loss" in row)
    for key in ("step", "train/loss", "train/lr", "train/grad_norm", "train/examples_per_sec", "train/step_time"):
        assert key in train_line
    assert any("eval/accuracy" in row for row in lines)
    (events,) = os.listdir(workdir / "tensorboard")
    assert tensorboard_scalars(workdir / "tensorboard" / events) == {
        (row["step"], key): pytest.approx(value) for row in lines for key, value in row.items() if "/" in key
    }
    assert config_lib.parse(yaml.safe_load(open(workdir / "config.yaml"))) == cfg
    for picture in ("confusion_matrix.png", "predictions.png"):
        assert os.path.getsize(workdir / picture) > 0
