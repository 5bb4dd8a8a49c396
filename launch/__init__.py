"""From the launcher's environment to jax.distributed.

`initialize()` reads what torchrun (or jaxrun, which sets the same variables) or
explicit JAX variables give a worker and starts JAX's distributed runtime; SLURM and
Open MPI jobs are left to JAX's own cluster detection. A single process initialises
nothing.
"""
import importlib.util
import os

import jax


def _on_gpu() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return "cuda" in platforms or "gpu" in platforms
    return any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin"))


def cluster_from_env(env=os.environ):
    """(coordinator_address, num_processes, process_id, local_rank, local_world_size), or None."""
    if "JAX_COORDINATOR_ADDRESS" in env:
        n, pid = int(env["JAX_NUM_PROCESSES"]), int(env["JAX_PROCESS_ID"])
        return env["JAX_COORDINATOR_ADDRESS"], n, pid, int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", 1))
    if "WORLD_SIZE" in env and "RANK" in env:  # torchrun / jaxrun
        addr = f"{env.get('MASTER_ADDR', '127.0.0.1')}:{env.get('MASTER_PORT', '29500')}"
        return addr, int(env["WORLD_SIZE"]), int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", 1))
    return None


def initialize(timeout_s: int = 300):
    cluster = cluster_from_env()
    if cluster is None:
        if any(k in os.environ for k in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")):
            jax.distributed.initialize(initialization_timeout=timeout_s)
        return
    addr, num_processes, process_id, local_rank, local_world_size = cluster
    if num_processes <= 1:
        return
    local_device_ids = None
    if _on_gpu():
        if local_world_size > 1:  # one process per GPU
            local_device_ids = [local_rank]
    else:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=addr,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
        initialization_timeout=timeout_s,
    )
