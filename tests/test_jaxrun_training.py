"""jaxrun starting real multi-process trainings on CPU (gloo collectives).

One process per worker, each with its own simulated CPU devices; the results are
compared with the in-process run on 8 devices and with each other.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import ROOT, assert_same_updates, tiny_config

from trainers import config as config_lib
from trainers.checkpoint import Checkpointer
from trainers.data import speech
from trainers.loop import Trainer, train

STEPS = 6
CFG = tiny_config(
    data={"eval_batch_size": 128},  # few eval steps: each costs a round of gloo collectives
    # SGD: its step is proportional to the gradient, so runs whose sums reduce in another
    # order compare at float32 tolerance (Adam moves a near-zero gradient's entry by lr).
    optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9},
    train={"steps": STEPS, "log_every": 1, "checkpoint_every": 2, "async_checkpointing": True},
)


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """Runs with the same process layout share their compiled programs."""
    return tmp_path_factory.mktemp("jax_cache")


def worker_env(devices_per_process, cache):
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "JAX_PLATFORMS": "cpu",
        # XLA compiling as conftest sets it for this process: these runs take a few steps
        # each, so compilation is most of their time.
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}"
        " --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false",
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


def jaxrun_cmd(config_path, workdir, *flags):
    return [
        sys.executable,
        "-m",
        "launch",
        *flags,
        "-m",
        "trainers.train",
        str(config_path),
        "--workdir",
        str(workdir),
    ]


def losses(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def final_params(workdir):
    step, state, _, _ = Checkpointer(os.path.join(workdir, "checkpoints")).restore(Trainer(CFG).abstract_state)
    return step, jax.device_get(state.params)


def free_port():
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(config_lib.dump(CFG))
    return path


@pytest.fixture(scope="module")
def standalone_run(config_path, compile_cache, tmp_path_factory):
    """jaxrun --standalone --nproc_per_node=2: two processes of four devices each."""
    workdir = tmp_path_factory.mktemp("standalone")
    proc = subprocess.run(
        jaxrun_cmd(config_path, workdir, "--standalone", "--nproc_per_node=2"),
        env=worker_env(4, compile_cache),
        capture_output=True,
        text=True,
        timeout=600,
    )
    return workdir, proc


@pytest.mark.slow  # multi-process training runs
def test_standalone_training_runs_to_completion(standalone_run):
    workdir, proc = standalone_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[default0]:final: eval/accuracy=" in proc.stdout and "[default1]:final: eval/accuracy=" in proc.stdout
    assert sorted(losses(workdir)) == list(range(1, STEPS + 1))
    assert final_params(workdir)[0] == STEPS


@pytest.mark.slow  # two minutes; CI runs it (.ci/run)
def test_two_nodes_of_two_processes_match_one_process_of_eight_devices(config_path, compile_cache, tmp_path):
    reference = tmp_path / "one_process"
    train(CFG, str(reference))  # this pytest process has 8 simulated devices

    workdir, port = tmp_path / "two_nodes", free_port()
    nodes = [
        subprocess.Popen(
            jaxrun_cmd(
                config_path,
                workdir,
                "--nnodes=2",
                f"--node_rank={rank}",
                "--nproc_per_node=2",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
            ),
            env=worker_env(2, compile_cache),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "ranks 2..3 of 4" in outputs[1]

    expected, got = losses(reference), losses(workdir)
    assert sorted(got) == sorted(expected)
    np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(got)], rtol=1e-5)
    (step_a, a), (step_b, b) = final_params(reference), final_params(workdir)
    assert step_a == step_b == STEPS
    assert_same_updates(jax.device_get(Trainer(CFG).init(CFG.seed).params), b, a)


def wait_for(predicate, proc, what, timeout_s=300):
    deadline = time.time() + timeout_s
    while not predicate():
        assert proc.poll() is None, f"jaxrun ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.slow  # multi-process training runs
def test_sigkilled_worker_restarts_the_group_and_resumes(config_path, compile_cache, standalone_run, tmp_path):
    workdir, log = tmp_path / "killed", tmp_path / "jaxrun.log"
    proc = subprocess.Popen(
        jaxrun_cmd(config_path, workdir, "--standalone", "--nproc_per_node=2", "--max_restarts=1"),
        env=worker_env(4, compile_cache),
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    started = re.compile(r"started rank 1 \(local rank 1, pid (\d+), round 0\)")
    wait_for(lambda: started.search(log.read_text()), proc, "rank 1 started")
    wait_for(lambda: (workdir / "checkpoints" / "2").is_dir(), proc, "the first checkpoint")
    os.kill(int(started.search(log.read_text()).group(1)), signal.SIGKILL)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]

    out = log.read_text()
    assert (
        "rank 1 (local rank 1 on node 0" in out
        and "was killed by signal 9 (SIGKILL); restarting the group (1/1)" in out
    )
    resumed = re.findall(r"\[default0\]:resumed from .*/checkpoints/(\d+)", out)
    assert resumed and 2 <= int(resumed[0]) < STEPS
    (step_a, a), (step_b, b) = final_params(standalone_run[0]), final_params(workdir)
    assert step_a == step_b == STEPS
    assert jax.tree.all(jax.tree.map(np.array_equal, a, b))


@pytest.mark.slow  # multi-process training runs
def test_sigterm_to_jaxrun_checkpoints_every_worker_at_one_step(config_path, compile_cache, tmp_path):
    workdir, log = tmp_path / "preempted", tmp_path / "jaxrun.log"
    proc = subprocess.Popen(
        jaxrun_cmd(config_path, workdir, "--standalone", "--nproc_per_node=2"),
        env=worker_env(4, compile_cache),
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    wait_for(lambda: "[default0]:step 1:" in log.read_text(), proc, "the first step")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=600) == 128 + signal.SIGTERM
    out = log.read_text()
    stopped = re.findall(r"\[default(\d)\]:signal 15: checkpoint written at step (\d+), stopping", out)
    assert sorted(r for r, _ in stopped) == ["0", "1"], out[-3000:]
    assert len({s for _, s in stopped}) == 1  # both processes stopped after the same step
    assert (workdir / "checkpoints" / stopped[0][1]).is_dir()


@pytest.mark.slow  # two minutes; CI runs it (.ci/run)
def test_tts_trains_and_speaks_with_params_sharded_over_two_processes(
    tone_corpus, fixtures_dir, compile_cache, tmp_path
):
    """Generation at eval needs the whole params on each process: with FSDP over both
    processes each holds only half of every sharded weight."""
    from test_tts import tts_config

    from trainers.speaker import main as train_speaker_embedder

    # SGD, as CFG: the eval losses of the trained params compare at float32 tolerance.
    cfg = tts_config(
        tone_corpus,
        fixtures_dir,
        tmp_path,
        mesh={"fsdp": 8},
        evals=[{"name": "speaker_similarity", "weights": str(tmp_path / "speaker.npz")}],
        optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.0},
    )
    path = tmp_path / "tts.yaml"
    path.write_text(config_lib.dump(cfg))
    train_speaker_embedder([str(path), "--out", str(tmp_path / "speaker.npz"), "--steps", "5"])
    reference = train(cfg, str(tmp_path / "one_process"))
    workdir = tmp_path / "two_processes"
    proc = subprocess.run(
        jaxrun_cmd(path, workdir, "--standalone", "--nproc_per_node=2"),
        env=worker_env(4, compile_cache),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    final = {k: v for r in rows if r["step"] == 2 for k, v in r.items()}
    for name in ("ar_loss", "nar_loss", "speaker_similarity"):
        assert final[f"eval/{name}"] == pytest.approx(reference[f"eval/{name}"], rel=1e-4), name
    for name in ("prompt", "reference", "generated"):
        assert len(speech.read_audio(str(workdir / "tts" / f"0_{name}.wav"))) > 0


@pytest.mark.slow  # multi-process runs
def test_upstream_weights_evaluate_the_same_over_two_processes(fixtures_dir, compile_cache, tmp_path):
    """trainers.evaluate --weights under jaxrun: each process places its slices of the
    converted weights and reads its share of the images; the metrics are one device's."""
    from test_weights import official_mambaout_folder

    config, weights = official_mambaout_folder(fixtures_dir, tmp_path)
    command = [sys.executable, "-m", "launch", "--standalone", "--nproc_per_node=2", "-m", "trainers.evaluate"]
    command += [str(config), "--weights", str(weights), "--workdir", str(tmp_path / "ev")]
    proc = subprocess.run(command, env=worker_env(4, compile_cache), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "ev" / "eval_weights.json").read_text())
    assert result["accuracy"] == 0.5 and result["top5_accuracy"] == 1.0, result


@pytest.mark.slow  # multi-process runs
def test_pretraining_batches_by_duration_over_two_processes(tone_corpus, compile_cache, tmp_path):
    """wav2vec 2.0 pretraining in batches by duration: each process reads its rows of the same
    plan, and the run is the in-process one's on 8 devices, loss for loss."""
    from test_hubert import hubert_config

    data = {"max_seconds": 0.08, "batch_seconds": 0.64, "bucket_seconds": [0.05]}  # 8 tones of either bucket
    cfg = hubert_config(tone_corpus, tmp_path, "wav2vec2", data=data, train={"steps": 4, "eval_every": 4})
    reference = train(cfg, str(tmp_path / "one_process"))
    path = tmp_path / "wav2vec2.yaml"
    path.write_text(config_lib.dump(cfg))
    workdir = tmp_path / "two_processes"
    proc = subprocess.run(
        jaxrun_cmd(path, workdir, "--standalone", "--nproc_per_node=2"),
        env=worker_env(4, compile_cache),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    np.testing.assert_allclose(list(losses(workdir).values()), list(losses(tmp_path / "one_process").values()), 1e-5)
    final = json.loads(open(workdir / "metrics.jsonl").readlines()[-1])
    assert final["eval/contrastive_loss"] == pytest.approx(reference["eval/contrastive_loss"], rel=1e-4)


@pytest.mark.slow  # multi-process runs
def test_sampling_batch_is_the_same_from_two_processes(fixtures_dir, compile_cache, tmp_path):
    """trainers.sample --num_samples under jaxrun: the images of one process on 8 devices."""
    from test_weights import dit_latent_config

    from trainers.sample import main as sample

    config, weights, vae_weights = dit_latent_config(fixtures_dir, tmp_path)
    args = [str(config), "--weights", str(weights), "--vae", str(vae_weights), "--num_samples", "12"]
    args += ["--batch_size", "8"]
    sample([*args, "--out", str(tmp_path / "one.npz")])
    command = [sys.executable, "-m", "launch", "--standalone", "--nproc_per_node=2", "-m", "trainers.sample"]
    proc = subprocess.run(
        [*command, *args, "--out", str(tmp_path / "two.npz")],
        env=worker_env(4, compile_cache),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with np.load(tmp_path / "one.npz") as one, np.load(tmp_path / "two.npz") as two:
        np.testing.assert_array_equal(one["arr_1"], two["arr_1"])
        # uint8 after float sums reduced in another order: at most one level apart
        assert np.abs(one["arr_0"].astype(int) - two["arr_0"].astype(int)).max() <= 1


@pytest.mark.slow  # multi-process runs
def test_latent_extraction_is_the_same_from_two_processes(fixtures_dir, compile_cache, tmp_path):
    """trainers.extract vae under jaxrun (2 processes x 2 devices): each process writes its
    rows; by image, the latents of one process on 8 devices."""
    from test_extract import by_index, image_folder
    from test_weights import dit_latent_config

    from trainers.extract import main as extract

    config, _, vae_weights = dit_latent_config(fixtures_dir, tmp_path)
    images = image_folder(tmp_path / "images")
    args = [str(config), "--images", str(images), "--vae", str(vae_weights), "--shard_batches", "2", "--flip"]
    extract(["vae", *args, "--workdir", str(tmp_path / "one"), "--batch_size", "8"])
    command = [sys.executable, "-m", "launch", "--standalone", "--nproc_per_node=2", "-m", "trainers.extract", "vae"]
    proc = subprocess.run(
        [*command, *args, "--workdir", str(tmp_path / "two"), "--batch_size", "4"],
        env=worker_env(2, compile_cache),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name[:2] for p in (tmp_path / "two" / "train").glob("*_indices.npy")) == ["p0", "p0", "p1", "p1"]
    one, two = by_index(tmp_path / "one" / "train"), by_index(tmp_path / "two" / "train")
    np.testing.assert_allclose(two[0], one[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(one[1:], two[1:]):
        np.testing.assert_array_equal(a, b)
