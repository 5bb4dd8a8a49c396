"""Matrix products on DiT-XL/2's layer shapes: XLA's (jitted) against torch's, float32.

    python benchmarks/products.py [--tokens 512 --iters 20]
    taskset -c 0 python benchmarks/products.py    # one thread each

For each of a block's Dense layers at --tokens rows (512: the train step's batch of 2 x 256
tokens), the three products of a training step on the same arrays: the forward x @ w, the
input gradient g @ w.T and the kernel gradient x.T @ g. Both libraries get the threads the
process may run on. Prints GFLOP/s and the ratios (torch / jax: above 1 means JAX is faster).
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import time_it  # noqa: E402

# DiT-XL/2's block: qkv 1152 -> 3 x 1152, the attention's output projection, the MLP's fc1 and fc2.
LAYERS = {"qkv": (1152, 3456), "proj": (1152, 1152), "fc1": (1152, 4608), "fc2": (4608, 1152)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import torch

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    print(f"{threads} threads; jax {jax.__version__} ({jax.devices()[0].device_kind}), torch {torch.__version__}")
    products = {
        "forward x @ w": (jax.jit(lambda x, w, g: x @ w), lambda x, w, g: x @ w),
        "input gradient g @ w.T": (jax.jit(lambda x, w, g: g @ w.T), lambda x, w, g: g @ w.T),
        "kernel gradient x.T @ g": (jax.jit(lambda x, w, g: x.T @ g), lambda x, w, g: x.T @ g),
    }
    rng = np.random.default_rng(0)
    for layer, (d_in, d_out) in LAYERS.items():
        arrays = [
            rng.standard_normal(s, np.float32) for s in ((args.tokens, d_in), (d_in, d_out), (args.tokens, d_out))
        ]
        on_jax = [jnp.asarray(a) for a in arrays]
        on_torch = [torch.from_numpy(a) for a in arrays]
        flop = 2 * args.tokens * d_in * d_out
        for name, (jax_fn, torch_fn) in products.items():
            t_jax = time_it(lambda: jax_fn(*on_jax).block_until_ready(), args.iters)
            t_torch = time_it(lambda: torch_fn(*on_torch), args.iters)
            print(
                f"{layer} {d_in} -> {d_out}, {name:24s} jax {flop / t_jax / 1e9:6.1f} GFLOP/s  "
                f"torch {flop / t_torch / 1e9:6.1f} GFLOP/s  torch/jax {t_torch / t_jax:.2f}x"
            )


if __name__ == "__main__":
    main()
