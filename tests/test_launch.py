"""jaxrun and launch.initialize: the environment mapping, the CLI, supervision (stand-in workers)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import pytest
from conftest import ROOT

import launch
from launch import Cluster, cluster_from_env, first_host, local_device_ids, tasks_on_node
from launch.run import build_parser, job_from_args

WORKER = str(ROOT / "tests" / "helpers" / "worker.py")
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def free_port():
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def jaxrun(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "launch", *args], env=ENV, capture_output=True, text=True, timeout=120, **kwargs
    )


def lines_of(stdout):
    """Worker lines by local rank, from the [role<local rank>]: console prefixes."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("[") and "]:" in line:
            tag, text = line[1:].split("]:", 1)
            out.setdefault(int(tag.lstrip("abcdefghijklmnopqrstuvwxyz_")), []).append(text)
    return out


# --- the environment mapping -------------------------------------------------------------


def test_torchrun_environment():
    env = {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "node0",
        "MASTER_PORT": "1234",
    }
    assert cluster_from_env(env) == Cluster("node0:1234", 8, 5, 1, 4, "torchrun")


def test_explicit_jax_variables_win():
    env = {
        "JAX_COORDINATOR_ADDRESS": "10.0.0.1:9999",
        "JAX_NUM_PROCESSES": "2",
        "JAX_PROCESS_ID": "1",
        "RANK": "0",
        "WORLD_SIZE": "1",
    }
    assert cluster_from_env(env) == Cluster("10.0.0.1:9999", 2, 1, 0, 1, "jax")


def test_slurm_environment_one_process_per_gpu():
    # srun -N2 --ntasks-per-node=4: the 7th task, third on the second node.
    env = {
        "SLURM_JOB_ID": "4100",
        "SLURM_PROCID": "6",
        "SLURM_LOCALID": "2",
        "SLURM_NODEID": "1",
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_NTASKS": "8",
        "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
        "SLURM_STEP_NODELIST": "gpu[017-018]",
    }
    cluster = cluster_from_env(env)
    assert cluster == Cluster(f"gpu017:{65535 - 4095 + 4100 % 4096}", 8, 6, 2, 4, "slurm")
    assert local_device_ids(cluster, gpus=4) == [2]
    assert cluster_from_env({**env, "MASTER_ADDR": "head", "MASTER_PORT": "7"}).coordinator == "head:7"


def test_slurm_environment_one_process_per_node():
    env = {
        "SLURM_JOB_ID": "12",
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "1",
        "SLURM_NTASKS": "2",
        "SLURM_TASKS_PER_NODE": "1(x2)",
        "SLURM_JOB_NODELIST": "a100-[3,9]",
    }
    cluster = cluster_from_env(env)
    assert (cluster.coordinator.split(":")[0], cluster.num_processes, cluster.process_id) == ("a100-3", 2, 1)
    assert cluster.local_world_size == 1
    assert local_device_ids(cluster, gpus=8) is None  # all eight


def test_openmpi_environment():
    env = {
        "OMPI_COMM_WORLD_SIZE": "16",
        "OMPI_COMM_WORLD_RANK": "9",
        "OMPI_COMM_WORLD_LOCAL_RANK": "1",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "8",
        "OMPI_MCA_orte_hnp_uri": "3735486464.0;tcp://10.1.2.3,172.17.0.1:41531",
    }
    cluster = cluster_from_env(env)
    assert cluster == Cluster(f"10.1.2.3:{65535 - 4095 + 3735486464 % 4096}", 16, 9, 1, 8, "openmpi")
    assert local_device_ids(cluster, gpus=8) == [1]
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        cluster_from_env({k: v for k, v in env.items() if k != "OMPI_MCA_orte_hnp_uri"})


def test_no_cluster_and_helpers():
    assert cluster_from_env({"PATH": "/bin"}) is None
    assert first_host("node[001-004,007],gpu1") == "node001" and first_host("solo") == "solo"
    assert tasks_on_node("2(x3),1", 2) == 2 and tasks_on_node("2(x3),1", 3) == 1
    two_per_process = Cluster("h:1", 4, 1, 1, 2, "torchrun")
    assert local_device_ids(two_per_process, gpus=4) == [2, 3]
    with pytest.raises(RuntimeError, match="cannot share 3 visible GPUs"):
        local_device_ids(two_per_process, gpus=3)
    with pytest.raises(ValueError, match="RANK='x'"):
        cluster_from_env({"RANK": "x", "WORLD_SIZE": "2"})


@pytest.mark.parametrize("gpus, expected_ids", [(0, None), (4, [3])])
def test_initialize_passes_the_layout_to_jax(monkeypatch, gpus, expected_ids):
    calls, updates = [], []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.config, "update", lambda *a: updates.append(a))
    monkeypatch.setattr(launch, "visible_gpus", lambda: gpus)
    for k, v in {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "3",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "5555",
    }.items():
        monkeypatch.setenv(k, v)
    launch.initialize(timeout_s=7)
    assert calls == [
        dict(
            coordinator_address="127.0.0.1:5555",
            num_processes=4,
            process_id=3,
            local_device_ids=expected_ids,
            initialization_timeout=17,
        )
    ]
    assert updates == ([] if gpus else [("jax_cpu_collectives_implementation", "gloo")])


def test_single_process_initialises_nothing(monkeypatch):
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: pytest.fail("initialised"))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert launch.initialize().num_processes == 1


def test_unreachable_coordinator_names_address_and_rank():
    port = free_port()
    env = {
        **ENV,
        "RANK": "1",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "JAXRUN_INIT_TIMEOUT": "2",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-c", "import launch; launch.initialize()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert (
        f"process 1 of 2 (torchrun environment) waited 2 s for the JAX coordinator at 127.0.0.1:{port}" in proc.stderr
    )
    assert "nothing accepts connections there" in proc.stderr


def test_a_busy_coordinator_port_is_named(monkeypatch):
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for key, value in {
            "RANK": "0",
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(launch.LaunchError, match=f"127.0.0.1:{port} .* port {port} is in use"):
            launch.initialize()


# --- the command line --------------------------------------------------------------------


def test_unknown_flag_is_an_error():
    proc = jaxrun("--nproc_per_node=2", "--bogus", WORKER, "env")
    assert proc.returncode == 2 and "unrecognized arguments: --bogus" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nnodes=1:2"], "needs --rdzv_backend=c10d"),
        (["--nnodes=2", "--node_rank=2"], "--node_rank=2 is not in 0..1"),
        (["--nproc_per_node=many"], "expected a positive integer, gpu, cpu or auto"),
        (["--no_python", "-m"], "cannot be used together"),
        (["--tee=0:5"], "a stream choice is 0"),
        (["--rdzv_conf=join_timeout=5,speed=9"], "unknown keys ['speed']"),
    ],
)
def test_bad_flags_are_named(args, message):
    with pytest.raises(ValueError) as e:
        job_from_args(build_parser().parse_args([*args, "script.py"]))
    assert message in str(e.value)


def test_flags_in_both_spellings_and_the_script_arguments():
    args = build_parser().parse_args(
        [
            "--nproc-per-node",
            "3",
            "--max_restarts=2",
            "--rdzv-backend=c10d",
            "--rdzv_endpoint=h:7",
            "--nnodes=2:4",
            "-m",
            "trainers.train",
            "c.yaml",
            "--workdir",
            "w",
            "--nnodes=9",
        ]
    )
    job = job_from_args(args)
    assert (job.nproc, job.max_restarts, job.min_nodes, job.max_nodes, job.endpoint) == (3, 2, 2, 4, ("h", 7))
    assert job.command == [sys.executable, "-u", "-m", "trainers.train", "c.yaml", "--workdir", "w", "--nnodes=9"]


# --- workers, supervision, signals ---------------------------------------------------------


def test_two_static_nodes_give_workers_torchruns_environment(tmp_path):
    port = free_port()
    common = [
        "--nnodes=2",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        "--rdzv_id=job7",
        "--max_restarts=3",
        f"--log_dir={tmp_path}",
        "--tee=1",
    ]
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "launch", *common, f"--node_rank={r}", WORKER, "env"],
            env={**{k: v for k, v in ENV.items() if k != "GLIBC_TUNABLES"}, "OMP_NUM_THREADS": ""},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (1, 0)
    ]
    outs = [n.communicate(timeout=60) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outs
    seen = {}
    for stdout, _ in outs:
        for local, lines in lines_of(stdout).items():  # torchrun's --tee prefix: the local rank
            env = json.loads(lines[0])
            assert env["LOCAL_RANK"] == str(local)
            seen[int(env["RANK"])] = env
    assert sorted(seen) == [0, 1, 2, 3]
    master_port = seen[0]["MASTER_PORT"]
    for rank, env in seen.items():
        error_file = env.pop("TORCHELASTIC_ERROR_FILE")
        assert error_file.startswith(str(tmp_path / "job7_")) and error_file.endswith(
            f"/attempt_0/{rank % 2}/error.json"
        )
        assert env == {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank % 2),
            "WORLD_SIZE": "4",
            "LOCAL_WORLD_SIZE": "2",
            "GROUP_RANK": str(rank // 2),
            "GROUP_WORLD_SIZE": "2",
            "ROLE_RANK": str(rank),
            "ROLE_WORLD_SIZE": "4",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": master_port,
            "TORCHELASTIC_RESTART_COUNT": "0",
            "TORCHELASTIC_MAX_RESTARTS": "3",
            "TORCHELASTIC_RUN_ID": "job7",
            "OMP_NUM_THREADS": "",
            "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
        }
    assert master_port != str(port)  # the JAX coordinator gets its own port; the agents keep theirs
    # torchrun's layout, one folder per agent: <log_dir>/<run_id>_<random>/attempt_<n>/<local rank>/
    logged = sorted(json.loads(p.read_text())["RANK"] for p in tmp_path.glob("job7_*/attempt_0/1/stdout.log"))
    assert logged == ["1", "3"]


def test_c10d_rendezvous_orders_nodes_by_arrival():
    port = free_port()
    common = ["--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--nnodes=2", "--nproc_per_node=1"]
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "launch", *common, WORKER, "env"],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [n.communicate(timeout=60)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0]
    envs = [json.loads(lines[0]) for out in outs for lines in lines_of(out).values()]
    assert sorted((e["RANK"], e["GROUP_RANK"], e["WORLD_SIZE"]) for e in envs) == [("0", "0", "2"), ("1", "1", "2")]


def test_elastic_job_restarts_on_more_nodes_when_one_arrives(tmp_path):
    port = free_port()
    common = [
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{port}",
        "--nnodes=1:2",
        "--nproc_per_node=1",
        "--rdzv_conf=last_call_timeout=0.5",
        "--max_restarts=0",
    ]
    outs = [tmp_path / f"node{i}.out" for i in range(2)]
    first = subprocess.Popen(
        [sys.executable, "-m", "launch", *common, WORKER, "env", "2"],
        env=ENV,
        stdout=open(outs[0], "w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 60
    while "WORLD_SIZE" not in outs[0].read_text():  # the first round runs on one node
        assert time.time() < deadline and first.poll() is None
        time.sleep(0.1)
    second = subprocess.Popen(
        [sys.executable, "-m", "launch", *common, WORKER, "env", "2"],
        env=ENV,
        stdout=open(outs[1], "w"),
        stderr=subprocess.STDOUT,
    )
    assert first.wait(timeout=60) == 0 and second.wait(timeout=60) == 0
    runs = [json.loads(line.split("]:", 1)[1]) for line in outs[0].read_text().splitlines() if line.startswith("[")]
    assert [(r["WORLD_SIZE"], r["TORCHELASTIC_RESTART_COUNT"]) for r in runs] == [("1", "0"), ("2", "0")]
    assert "a node is waiting to join" in outs[0].read_text()


def test_redirected_output_goes_only_to_the_log(tmp_path):
    proc = jaxrun("--standalone", "--nproc_per_node=2", "--redirects=0:1", f"--log_dir={tmp_path}", WORKER, "env")
    assert proc.returncode == 0, proc.stderr
    assert sorted(lines_of(proc.stdout)) == [1]
    (log,) = tmp_path.glob("*/attempt_0/0/stdout.log")
    assert json.loads(log.read_text())["RANK"] == "0"


def test_restarts_exhausted_exits_nonzero_with_a_summary():
    proc = jaxrun(
        "--standalone", "--nproc_per_node=2", "--max_restarts=1", "--monitor_interval=0.05", WORKER, "fail", "1", "3"
    )
    assert proc.returncode == 1
    printed = lines_of(proc.stdout)
    assert printed[0] == ["restart 0", "rank 0 got 15", "restart 1", "rank 0 got 15"]  # SIGTERM, as torchrun
    assert "restarting the group (1/1)" in proc.stderr
    assert "restarting the group (1/1)" in proc.stderr
    summary = proc.stderr[proc.stderr.index("no restarts are left") :]
    assert "first failure: rank 1 (local rank 1 on node 0" in summary and "exited with code 3" in summary
    assert "rank 1 line 2" in summary and "something broke" in summary


def test_a_worker_killed_by_a_signal_is_named():
    proc = jaxrun("--standalone", "--nproc_per_node=2", WORKER, "fail", "0", "-9")
    assert proc.returncode == 1
    assert "rank 0 (local rank 0 on node 0" in proc.stderr and "was killed by signal 9 (SIGKILL)" in proc.stderr


def test_sigterm_reaches_every_node_and_sets_the_exit_code(tmp_path):
    port = free_port()
    common = ["--nnodes=2", "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}"]
    outs = [tmp_path / f"node{r}.out" for r in (0, 1)]
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "launch", *common, f"--node_rank={r}", WORKER, "wait"],
            env=ENV,
            stdout=open(outs[r], "w"),
            stderr=subprocess.STDOUT,
        )
        for r in (0, 1)
    ]
    deadline = time.time() + 60
    while sum(out.read_text().count("ready") for out in outs) < 4:  # all handlers installed
        assert time.time() < deadline and all(n.poll() is None for n in nodes)
        time.sleep(0.1)
    nodes[1].send_signal(signal.SIGTERM)  # preemption of one node: all four workers must hear of it
    assert [n.wait(timeout=60) for n in nodes] == [128 + signal.SIGTERM] * 2
    last = sorted(lines[-1] for out in outs for lines in lines_of(out.read_text()).values())
    assert last == [f"rank {r} got 15" for r in range(4)]


def started_pids(text):
    return [int(pid) for pid in re.findall(r"started rank \d+ \(local rank \d+, pid (\d+)", text)]


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:  # a zombie waits only for its reaper
        return f.read().split(")")[-1].split()[0] == "Z"


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGQUIT])
def test_no_signal_that_ends_jaxrun_leaves_workers_behind(tmp_path, signum):
    log = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch", "--standalone", "--nproc_per_node=2", WORKER, "wait"],
        env=ENV,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 60
    while log.read_text().count("ready") < 2:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    pids = started_pids(log.read_text())
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == (-signum if signum == signal.SIGKILL else 128 + signum)
    deadline = time.time() + 30
    while not all(gone(p) for p in pids):
        assert time.time() < deadline, f"workers {pids} outlived jaxrun"
        time.sleep(0.05)


def test_workers_share_stdin_and_see_a_terminal_where_jaxrun_does():
    proc = jaxrun("--standalone", "--nproc_per_node=1", WORKER, "stdin", input="hello\n")
    assert proc.returncode == 0 and "[default0]:read hello" in proc.stdout
    assert "[default0]:tty False" in jaxrun("--standalone", WORKER, "tty").stdout

    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch", "--standalone", WORKER, "tty"],
        env=ENV,
        stdout=slave,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    os.close(slave)
    assert proc.wait(timeout=60) == 0
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    assert b"[default0]:tty True" in out


def test_output_passes_through_as_it_comes():
    """A progress bar's carriage return reaches the console at once, and a prompt without a newline soon after."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch", "--standalone", WORKER, "progress"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        os.set_blocking(proc.stdout.fileno(), False)
        out, deadline = b"", time.time() + 60
        while b"ask? " not in out:
            assert time.time() < deadline and proc.poll() is None, out
            out += proc.stdout.read() or b""
            time.sleep(0.05)
        assert out.endswith(b"[default0]:half\r[default0]:ask? ")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_workers_lines_never_interleave():
    """Lines written in pieces by several workers at once reach the console whole."""
    proc = subprocess.run(
        [sys.executable, "-m", "launch", "--standalone", "--nproc_per_node=4", WORKER, "split"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    shown = [line for line in proc.stdout.splitlines() if line.startswith("[default")]
    assert sorted(shown) == sorted(f"[default{r}]:rank {r} line {i}" for r in range(4) for i in range(5)), shown


def test_pet_variables_local_rank_macro_and_torchrun_flags(tmp_path):
    env = {**ENV, "PET_NPROC_PER_NODE": "2", "PET_STANDALONE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch",
            "--max_restart=0",
            "--signals_to_handle=SIGTERM,SIGINT",
            "--rdzv_conf=read_timeout=60",
            f"--log_dir={tmp_path}",
            "--tee=1",
            WORKER,
            "args",
            "--device=${local_rank}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert {k: json.loads(v[0]) for k, v in lines_of(proc.stdout).items()} == {0: ["--device=0"], 1: ["--device=1"]}
    assert "--rdzv_conf read_timeout: accepted, no effect" in proc.stderr
    again = subprocess.run(
        [sys.executable, "-m", "launch", f"--log_dir={tmp_path}", "--tee=1", WORKER, "args"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0
    assert len(list(tmp_path.glob("*/attempt_0/0/stdout.log"))) == 2  # a second run never overwrites the first
    with pytest.raises(ValueError, match="LogsSpecs plug-ins are torch classes"):
        job_from_args(build_parser().parse_args(["--logs_specs=my.Specs", "script.py"]))


def test_a_failing_workers_error_file_is_in_the_summary(tmp_path):
    script = tmp_path / "record.py"
    script.write_text(
        "import json, os, sys\n"
        "json.dump({'message': {'message': 'ValueError: bad shard'}}, "
        "open(os.environ['TORCHELASTIC_ERROR_FILE'], 'w'))\n"
        "sys.exit(1)\n"
    )
    proc = jaxrun("--standalone", str(script))
    assert proc.returncode == 1
    assert "error (from its TORCHELASTIC_ERROR_FILE): ValueError: bad shard" in proc.stderr
