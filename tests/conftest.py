import atexit
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

# 8 simulated CPU devices, set before jax is imported anywhere (nothing above imports it).
# Compiling is most of the suite's time, and test programs run a few steps each: LLVM's
# optimisation passes are most of a program's compile time (a tiny model's train step: 13 s
# at the default level, 8 s at 0), and XLA:CPU's MLIR fusion emitters take twice as long as
# its elemental ones to compile a small program (40 ms against 21 ms an eager op; the flow
# and codec tests 115 s against 75 s; a demo's step runs as fast either way).
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + (
    " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile the same programs many times over (each Trainer jits its own steps, and the
# commands run in fresh processes): a compilation cache for this run, shared with every
# process it starts, compiles each once. It starts empty, so the suite's time is a fresh one.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxmodels-tests-xla-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"
# The demos run as a user runs them: on this machine's one CPU device with XLA's default
# optimisation, not on the eight simulated devices set above (XLA:CPU's in-process
# all-reduce across eight simulated devices on two cores has been seen to deadlock in long runs).
DEMO_ENV = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "PYTHONPATH": str(ROOT)}


# pytest-xdist hands whole files to its workers in collection order (--dist loadfile): the
# files with the longest tests go first, so that no worker is left with one at the end.
LONGEST_FIRST = (
    "test_demo_speech.py",
    "test_paper_configs.py",
    "test_tts.py",
    "test_weights.py",
    "test_audiolm.py",
    "test_demo_digits.py",
    "test_codec_training.py",
    "test_hubert.py",
    "test_speechlm.py",
    "test_sharding.py",
    "test_inception.py",
)


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file keeps its own order


def run(args, env=None):
    """A command run from the repository root (CompletedProcess, text output); when it fails,
    the test fails with the end of what it printed (a CalledProcessError shows none of it)."""
    out = subprocess.run([str(a) for a in args], cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, args))} exited with {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"
        )
    return out


def run_demo(module, *args):
    """``python -m module args`` as a user runs it (DEMO_ENV), failing the test with its output."""
    return run([sys.executable, "-m", module, *args], DEMO_ENV)


def one_step_on_one_and_eight_devices(make_config, make_batch):
    """One training step on one device (mesh.data 1), then on all eight: for each, (params and
    model state before, the step's metrics, params and model state after). make_config(mesh)
    gives the config, make_batch(task) the 8-row batch (the same rows both times)."""
    import jax

    from trainers import sharding
    from trainers.loop import Trainer, with_state

    results = []
    for mesh, devices in (({"data": 1}, jax.devices()[:1]), ({"data": 8}, None)):
        trainer = Trainer(make_config(mesh), devices)
        state = trainer.init(0)
        before = jax.device_get(with_state(state.params, state.model_state))
        batch = make_batch(trainer.task)
        with trainer.context():
            state, metrics = trainer.train_step(state, sharding.to_global(trainer.mesh, batch, 8))
        after = jax.device_get(with_state(state.params, state.model_state))
        results.append((before, {k: float(v) for k, v in metrics.items()}, after))
    return results


def assert_resumes_bitwise(cfg, workdir, last_step: int, final: dict) -> dict:
    """The run in `workdir` (ended at `last_step` with metrics `final`), copied without its last
    checkpoint and trained again, ends with the same metrics and bitwise the same params and
    model state; returns them ({"params", "state"}, host arrays)."""
    import jax
    import numpy as np

    from trainers.checkpoint import Checkpointer
    from trainers.loop import Trainer, train

    resumed = workdir.parent / f"{workdir.name}_resumed"
    shutil.copytree(workdir, resumed)
    shutil.rmtree(resumed / "checkpoints" / str(last_step))
    assert train(cfg, str(resumed)) == final
    states = [
        Checkpointer(str(run / "checkpoints")).restore(Trainer(cfg).abstract_state)[1] for run in (workdir, resumed)
    ]
    a, b = (jax.device_get({"params": s.params, "state": s.model_state}) for s in states)
    assert jax.tree.all(jax.tree.map(np.array_equal, a, b))
    return a


def assert_same_updates(before, after, reference_after, rtol=1e-4):
    """The updates ``after - before`` equal ``reference_after - before`` leaf by leaf.

    For comparing a sharded step with one device. A sum reduced in another order differs in
    float32 by a few ulps of the summands, not of the sum: a gradient that cancels to about
    zero differs by much more than rtol of itself. So each leaf's tolerance is rtol of the
    largest update in the whole tree (the summands' scale), plus rtol of the value itself.
    Use an optimizer whose step is proportional to the gradient (SGD): Adam divides each
    entry by its own magnitude, so such near-zero entries move by the full learning rate.
    """
    import jax
    import numpy as np

    delta = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64), after, before)
    ref = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64), reference_after, before)
    scale = max(float(np.abs(r).max(initial=0.0)) for r in jax.tree.leaves(ref))
    assert scale > 0, "no parameter moved"
    paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(ref)[0]]
    for path, d, r in zip(paths, jax.tree.leaves(delta), jax.tree.leaves(ref)):
        np.testing.assert_allclose(d, r, rtol=rtol, atol=rtol * scale, err_msg=path)


@pytest.fixture(params=[False, pytest.param(True, marks=pytest.mark.slow)], ids=["x32", "x64"])
def x64(request):
    """The test twice: as usual and with 64-bit types on (jax.enable_x64, in the slow tier), for
    the decoding loops and quantizers whose token ids, indices and state must keep their widths."""
    import jax

    with jax.enable_x64(request.param):
        yield request.param


@pytest.fixture
def fixtures_dir():
    if not FIXTURES.is_dir():
        pytest.skip(f"reference fixtures not found at {FIXTURES}")
    return FIXTURES


# A SenseVoice-style recogniser and an 8 kHz EnCodec (hop 4, 3 codebooks of 8) small enough
# to train a step in seconds, for the configs of the speech families' tests.
TINY_SENSEVOICE = {
    "name": "sensevoice_small",
    "args": {
        "encoder_conf": {"output_size": 32, "attention_heads": 2, "linear_units": 32, "num_blocks": 2, "tp_blocks": 1}
    },
}
TINY_CODEC = {
    "name": "encodec_24khz",
    "args": {
        "sample_rate": 8000,
        "n_filters": 2,
        "dimension": 8,
        "ratios": [2, 2],
        "lstm": 1,
        "n_q": 3,
        "bins": 8,
        "target_bandwidths": [6.0, 18.0],
    },
}


def manifest_data(corpus, **keys):
    """A data section over a manifest corpus's train and test splits, batches of 8."""
    return {
        "source": "manifest",
        "path": str(corpus),
        "train_split": "train",
        "eval_split": "test",
        "batch_size": 8,
        "eval_batch_size": 8,
        **keys,
    }


def tiny_config(**sections):
    """A small classification config on the digits (16x16), overridable by section."""
    from trainers import config as config_lib

    base = {
        "task": "classification",
        "model": {"name": "mambaout_femto", "args": {"depths": [1, 1, 1, 1], "dims": [8, 16, 16, 32]}},
        "data": {
            "source": "digits",
            "image_size": 16,
            "batch_size": 16,
            "eval_batch_size": 16,
            "random_resized_crop": False,
            "hflip": 0.0,
        },
        "optimizer": {"lr": 1e-2, "warmup_steps": 2, "clip_grad_norm": 1.0},
        "train": {"steps": 4, "log_every": 2, "eval_every": 100, "checkpoint_every": 2, "async_checkpointing": False},
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            base.setdefault(name, {}).update(values)
        else:
            base[name] = values
    return config_lib.parse(base)


@pytest.fixture(scope="session")
def tone_corpus(tmp_path_factory):
    """A JSON-lines manifest corpus of short tones (0.03-0.06 s at 16 kHz; a speaker is a pitch), 4 speakers;
    its one or two words divide each tone evenly (word_starts); its phone is its speaker's pitch (phones)."""
    import json

    import numpy as np

    from trainers.data import speech

    root = tmp_path_factory.mktemp("tones")
    rng = np.random.default_rng(0)
    (root / "wav").mkdir()
    for split, n in (("train", 24), ("test", 6)):
        lines = []
        for i in range(n):
            speaker = i % 4
            length = int(rng.integers(480, 960))
            t = np.arange(length) / 16000
            audio = 0.3 * np.sin(2 * np.pi * (200 + 100 * speaker) * t) * np.hanning(length)
            key = f"{split}{i}"
            speech.write_wav(str(root / "wav" / f"{key}.wav"), audio.astype(np.float32))
            words = rng.choice(["one", "two", "three"], int(rng.integers(1, 3)))
            lines.append(
                json.dumps(
                    {
                        "key": key,
                        "source": f"wav/{key}.wav",
                        "target": " ".join(words),
                        "speaker": f"s{speaker}",
                        "word_starts": [k * length / 16000 / len(words) for k in range(len(words))],
                        "phones": [[0.0, f"tone{speaker}"]],
                    }
                )
            )
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root
