"""Attention forward + backward: jaxmodels.nn.attention.dot_product_attention against torch's
scaled_dot_product_attention on the same inputs.

    python benchmarks/attention.py [--iters 10]

Shapes (batch, length, heads, head_dim): DiT-XL/2's at 256x256 (2, 256, 16, 72) and the AudioLM
demo's fine stage (8, 800, 4, 32), causal there as the stage is. Each side: the loss
sum(out * probe), its gradients of q, k and v; JAX's step jitted, one per implementation
(custom_vjp: the CPU's default; xla: jax.nn's composition). Prints the median times, the ratios
(torch / jax: above 1 means JAX is faster) and the largest gradient difference between the
JAX implementations.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import time_it  # noqa: E402

SHAPES = {"DiT-XL/2": ((2, 256, 16, 72), False), "AudioLM fine stage": ((8, 800, 4, 32), True)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--implementations", default="custom_vjp,xla", help="the JAX implementations, comma-separated")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import torch

    from jaxmodels.nn.attention import dot_product_attention

    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, torch {torch.__version__}")
    for name, (shape, causal) in SHAPES.items():
        rng = np.random.default_rng(0)
        q, k, v, probe = (rng.standard_normal(shape).astype(np.float32) for _ in range(4))
        mask = np.tril(np.ones((shape[1], shape[1]), bool))[None, None] if causal else None

        qt, kt, vt = (torch.from_numpy(x.transpose(0, 2, 1, 3).copy()).requires_grad_() for x in (q, k, v))
        probe_t = torch.from_numpy(probe.transpose(0, 2, 1, 3).copy())

        def torch_step():
            for x in (qt, kt, vt):
                x.grad = None
            out = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
            (out * probe_t).sum().backward()

        t_torch = time_it(torch_step, args.iters)
        print(f"{name} {shape}{', causal' if causal else ''}: torch {t_torch * 1e3:.1f} ms")
        grads = {}
        for implementation in args.implementations.split(","):

            def loss(q, k, v, implementation=implementation):
                return jnp.sum(dot_product_attention(q, k, v, implementation, mask=mask) * probe)

            step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
            grads[implementation] = step(q, k, v)
            t = time_it(lambda step=step: jax.block_until_ready(step(q, k, v)), args.iters)
            print(f"  jax {implementation:10s} {t * 1e3:8.1f} ms  ratio torch/jax {t_torch / t:.2f}x")
        first, *rest = grads.values()
        for other in rest:
            error = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in zip(first, other))
            print(f"  gradients, largest difference relative to the largest value: {error:.1e}")


if __name__ == "__main__":
    main()
