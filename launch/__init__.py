"""From a launcher's environment to `jax.distributed.initialize`.

`initialize()` is called by every entry point before JAX touches a device. It reads
the environment that jaxrun or torchrun (RANK, WORLD_SIZE, ...), SLURM's srun, Open
MPI's mpirun, or explicit JAX variables give a process, and starts JAX's distributed
runtime. A single process initialises nothing. On TPU pods with none of these set,
JAX detects the cluster itself.

The command-line launcher itself is `launch.run` (the `jaxrun` script).
"""

import dataclasses
import glob
import importlib.util
import os
import re
import socket
import sys
import threading

DEFAULT_PORT = 29500


class LaunchError(RuntimeError):
    """The environment describes a process layout that cannot be started."""


DEFAULT_TIMEOUT_S = 300


@dataclasses.dataclass(frozen=True)
class Cluster:
    coordinator: str  # host:port of the JAX coordinator (process 0)
    num_processes: int
    process_id: int
    local_rank: int  # this process's index among those on its node
    local_world_size: int  # processes on this node
    source: str  # which environment it was read from


def _int(env, *names):
    for name in names:
        if env.get(name, "") != "":
            try:
                return int(env[name])
            except ValueError:
                raise ValueError(f"environment variable {name}={env[name]!r} is not an integer") from None
    raise KeyError(names[0])


def _master(env, default_host=None, default_port=DEFAULT_PORT):
    host = env.get("MASTER_ADDR") or default_host
    if not host:
        return None
    return f"{host}:{env.get('MASTER_PORT') or default_port}"


def _job_port(job_id: int) -> int:
    # A port derived from the job id, so every process of the job picks the same one
    # without talking (JAX's own SLURM and Open MPI detection uses the same range).
    return 65535 - 2**12 + 1 + job_id % 2**12


def first_host(nodelist: str) -> str:
    """The first host of a SLURM hostlist: 'gpu[003-007,9],cpu1' -> 'gpu003'."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ValueError(f"cannot read the SLURM node list {nodelist!r}")
    prefix, ranges = m.groups()
    return prefix + (ranges.split(",")[0].split("-")[0] if ranges else "")


def tasks_on_node(tasks_per_node: str, node_id: int) -> int:
    """SLURM's compressed tasks-per-node list: '2(x3),1' is 2,2,2,1."""
    counts = []
    for part in tasks_per_node.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            raise ValueError(f"cannot read SLURM_TASKS_PER_NODE={tasks_per_node!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts[node_id]


def cluster_from_env(env=None) -> Cluster | None:
    """Reads the process layout from the environment; None when nothing describes one."""
    env = os.environ if env is None else env
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return Cluster(
            env["JAX_COORDINATOR_ADDRESS"],
            _int(env, "JAX_NUM_PROCESSES"),
            _int(env, "JAX_PROCESS_ID"),
            int(env.get("LOCAL_RANK", 0)),
            int(env.get("LOCAL_WORLD_SIZE", 1)),
            "jax",
        )
    if "RANK" in env and "WORLD_SIZE" in env:  # jaxrun or torchrun
        return Cluster(
            _master(env, "127.0.0.1"),
            _int(env, "WORLD_SIZE"),
            _int(env, "RANK"),
            int(env.get("LOCAL_RANK", 0)),
            int(env.get("LOCAL_WORLD_SIZE", 1)),
            "torchrun",
        )
    if "SLURM_PROCID" in env and ("SLURM_STEP_NUM_TASKS" in env or "SLURM_NTASKS" in env):  # srun
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        coordinator = _master(env) or f"{first_host(nodelist)}:{_job_port(_int(env, 'SLURM_JOB_ID'))}"
        per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or "1"
        return Cluster(
            coordinator,
            _int(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"),
            _int(env, "SLURM_PROCID"),
            _int(env, "SLURM_LOCALID"),
            tasks_on_node(per_node, _int(env, "SLURM_NODEID")),
            "slurm",
        )
    if "OMPI_COMM_WORLD_SIZE" in env:  # mpirun
        coordinator = _master(env)
        if coordinator is None:
            # OMPI_MCA_orte_hnp_uri = "<jobid>.0;tcp://<ip>[,<ip>...]:<port>" names mpirun's host.
            m = re.match(r"(\d+)\.\d+;tcp://([^,:;]+)", env.get("OMPI_MCA_orte_hnp_uri", ""))
            if not m:
                raise LaunchError(
                    "Open MPI job without OMPI_MCA_orte_hnp_uri: set MASTER_ADDR (and MASTER_PORT) "
                    "to the host of rank 0 so the JAX coordinator can be found"
                )
            coordinator = f"{m.group(2)}:{_job_port(int(m.group(1)))}"
        return Cluster(
            coordinator,
            _int(env, "OMPI_COMM_WORLD_SIZE"),
            _int(env, "OMPI_COMM_WORLD_RANK"),
            _int(env, "OMPI_COMM_WORLD_LOCAL_RANK"),
            _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE"),
            "openmpi",
        )
    return None


def visible_gpus(env=None) -> int:
    """NVIDIA GPUs this process may use, counted without starting a JAX backend."""
    env = os.environ if env is None else env
    platforms = env.get("JAX_PLATFORMS", "")
    if platforms and not any(p in platforms for p in ("cuda", "gpu")):
        return 0
    if not any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin")):
        return 0
    if "CUDA_VISIBLE_DEVICES" in env:
        return len([d for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip() not in ("", "-1")])
    return len(glob.glob("/dev/nvidia[0-9]*"))


def local_device_ids(cluster: Cluster, gpus: int) -> list[int] | None:
    """The GPUs this process drives: [LOCAL_RANK] with one process per GPU, all with one per node."""
    n = cluster.local_world_size
    if gpus <= 1 or n == 1:
        return None  # every visible device (the launcher may have narrowed CUDA_VISIBLE_DEVICES)
    if gpus % n:
        raise LaunchError(
            f"{n} processes on this node cannot share {gpus} visible GPUs evenly "
            f"(process {cluster.process_id}, local rank {cluster.local_rank})"
        )
    per = gpus // n
    return list(range(cluster.local_rank * per, (cluster.local_rank + 1) * per))


def _on_tpu() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "")
    return (not platforms or "tpu" in platforms) and importlib.util.find_spec("libtpu") is not None


class _Watchdog:
    """Names the coordinator and the waiting rank if the coordinator never answers.

    jax.distributed.initialize aborts the whole process (no Python exception) when its
    deadline passes, so this thread reports first, slightly before JAX would.
    """

    def __init__(self, cluster: Cluster, timeout_s: float):
        self.cluster, self.timeout_s = cluster, timeout_s
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()

    def _reachable(self) -> bool:
        host, port = self.cluster.coordinator.rsplit(":", 1)
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
            return True
        except OSError:
            return False

    def _watch(self):
        if self.done.wait(self.timeout_s):
            return
        c = self.cluster
        if c.process_id == 0:
            why = f"not all {c.num_processes} processes connected"
        elif self._reachable():
            why = "the address accepts connections, but not all processes joined"
        else:
            why = "nothing accepts connections there"
        sys.stderr.write(
            f"launch.initialize: process {c.process_id} of {c.num_processes} ({c.source} environment) waited "
            f"{self.timeout_s:.0f} s for the JAX coordinator at {c.coordinator}: {why}\n"
        )
        sys.stderr.flush()
        os._exit(1)


def _check_port_free(cluster: Cluster):
    """Process 0 hosts the coordinator: a port already taken is named here, not in a gRPC abort."""
    port = int(cluster.coordinator.rsplit(":", 1)[1])
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError as e:
            raise LaunchError(
                f"process 0 cannot host the JAX coordinator at {cluster.coordinator} ({cluster.source} "
                f"environment): port {port} is in use ({e.strerror}); choose another MASTER_PORT"
            ) from None


def initialize(timeout_s: float | None = None) -> Cluster | None:
    """Starts jax.distributed from the environment; returns the cluster, or None for one process.

    timeout_s (default: $JAXRUN_INIT_TIMEOUT, else 300) bounds the wait for the
    coordinator and the other processes. On CPU, collectives go through gloo and each
    process has the local devices JAX_NUM_CPU_DEVICES (or XLA_FLAGS) configures.
    """
    import jax

    timeout_s = float(timeout_s or os.environ.get("JAXRUN_INIT_TIMEOUT") or DEFAULT_TIMEOUT_S)
    cluster = cluster_from_env()
    if cluster is None:
        if _on_tpu():
            jax.distributed.initialize(initialization_timeout=int(timeout_s))
        return None
    if cluster.num_processes <= 1 or jax.distributed.is_initialized():
        return cluster
    if cluster.process_id == 0:
        _check_port_free(cluster)
    gpus = visible_gpus()
    if not gpus:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    with _Watchdog(cluster, timeout_s):
        jax.distributed.initialize(
            coordinator_address=cluster.coordinator,
            num_processes=cluster.num_processes,
            process_id=cluster.process_id,
            local_device_ids=local_device_ids(cluster, gpus),
            initialization_timeout=int(timeout_s) + 10,
        )
    return cluster
