"""What one all-reduce operand costs between processes on CPU (gloo), by local devices per process.

    jaxrun --standalone --nproc_per_node=2 benchmarks/cpu_collectives.py --operands 80
    (with XLA_FLAGS=--xla_force_host_platform_device_count=N for N devices per process)

Sums --operands small arrays over a batch sharded across every device of every process:
XLA combines them into one all-reduce instruction, and XLA:CPU's gloo collectives then
run one cross-process round per operand. Process 0 prints the milliseconds per call
and per operand. Compare with one process of the same devices (run without jaxrun).
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from common import time_it  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operands", type=int, default=80)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()

    import launch

    launch.initialize()
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    rows, whole = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    local = np.ones((jax.local_device_count(), 256), np.float32)
    xs = [jax.make_array_from_process_local_data(rows, local, (jax.device_count(), 256)) for _ in range(args.operands)]
    summed = jax.jit(lambda xs: [x.sum(0) for x in xs], out_shardings=whole)
    seconds = time_it(lambda: jax.block_until_ready(summed(xs)), args.iters)
    if jax.process_index() == 0:
        print(
            f"{jax.process_count()} processes x {jax.local_device_count()} devices, {args.operands} operands: "
            f"{seconds * 1e3:.1f} ms per call, {seconds * 1e3 / args.operands:.2f} ms per operand",
            flush=True,
        )


if __name__ == "__main__":
    main()
