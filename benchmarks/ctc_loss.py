"""CTC loss + gradient: jaxmodels.ctc.ctc_loss against optax.ctc_loss and torch's ctc_loss
on the same batch (B=32, T=500, V=100, U=100), float32; on a GPU also its Pallas kernel
(`implementation="pallas"`, jaxmodels/ctc/pallas.py).

    python benchmarks/ctc_loss.py [--batch 32 --frames 500 --vocab 100 --labels 100 --iters 20]
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmodels.ctc import ctc_loss
from jaxmodels.ctc import loss as loss_module

sys.path.insert(0, os.path.dirname(__file__))
from common import time_it  # noqa: E402


def problem(batch, frames, vocab, num_labels, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, frames, vocab)).astype(np.float32)
    input_lengths = rng.integers(frames * 3 // 4, frames + 1, batch)
    target_lengths = rng.integers(num_labels * 3 // 4, num_labels + 1, batch)
    labels = rng.integers(1, vocab, (batch, num_labels)).astype(np.int32)
    logit_paddings = (np.arange(frames)[None] >= input_lengths[:, None]).astype(np.float32)
    label_paddings = (np.arange(num_labels)[None] >= target_lengths[:, None]).astype(np.float32)
    labels = np.where(label_paddings > 0, 0, labels)
    return logits, logit_paddings, labels, label_paddings, input_lengths, target_lengths


def run_torch(logits, labels, input_lengths, target_lengths, iters):
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.tensor(logits, requires_grad=True, device=device)
    targets = torch.tensor(labels, dtype=torch.long, device=device)
    il, tl = torch.tensor(input_lengths, device=device), torch.tensor(target_lengths, device=device)

    def step():
        x.grad = None
        log_probs = torch.log_softmax(x, -1).transpose(0, 1)  # torch wants (T, B, V)
        loss = torch.nn.functional.ctc_loss(log_probs, targets, il, tl, blank=0, reduction="sum")
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return loss

    loss = step()
    return time_it(step, iters), float(loss.detach()), x.grad.detach().cpu().numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--vocab", type=int, default=100)
    parser.add_argument("--labels", type=int, default=100)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--unroll", default="", help="also time these frames per loop iteration: 1,4,16")
    args = parser.parse_args()
    logits, logit_paddings, labels, label_paddings, il, tl = problem(args.batch, args.frames, args.vocab, args.labels)
    device = jax.devices()[0]
    print(
        f"CTC loss + grad, B={args.batch} T={args.frames} V={args.vocab} U={args.labels}, float32, "
        f"{device.device_kind}"
    )

    inputs = [jnp.asarray(a) for a in (logits, logit_paddings, labels, label_paddings)]
    ours = jax.jit(jax.value_and_grad(lambda x, *a: jnp.sum(ctc_loss(x, *a))))
    reference = jax.jit(jax.value_and_grad(lambda x, *a: jnp.sum(optax.ctc_loss(x, *a))))

    def measure(fn):
        loss, grad = jax.block_until_ready(fn(*inputs))
        return time_it(lambda: jax.block_until_ready(fn(*inputs)), args.iters), float(loss), np.asarray(grad)

    results = {"jaxmodels": measure(ours), "optax": measure(reference)}
    default_unroll = dict(loss_module.SCAN_UNROLL)
    for unroll in filter(None, args.unroll.split(",")):
        loss_module.SCAN_UNROLL = {jax.default_backend(): int(unroll)}  # read when the loss is traced
        results[f"unroll {unroll}"] = measure(jax.jit(jax.value_and_grad(lambda x, *a: jnp.sum(ctc_loss(x, *a)))))
    loss_module.SCAN_UNROLL = default_unroll
    if jax.default_backend() == "gpu":  # elsewhere the kernel runs in Pallas' interpreter, which times nothing
        pallas = jax.value_and_grad(lambda x, *a: jnp.sum(ctc_loss(x, *a, implementation="pallas")))
        results["pallas"] = measure(jax.jit(pallas))
    try:
        results["torch"] = run_torch(logits, labels, il, tl, args.iters)
    except ImportError:
        print("  torch not installed: no torch comparison")

    # Accuracy against a float64 run (the float64 path reproduces torch's float64 fixtures).
    with jax.enable_x64(True):
        exact = jax.value_and_grad(lambda x, *a: jnp.sum(ctc_loss(x, *a)))(
            jnp.asarray(logits, jnp.float64), *inputs[1:]
        )
        exact_loss, exact_grad = float(exact[0]), np.asarray(exact[1])

    ours_time = results["jaxmodels"][0]
    for name, (seconds, loss, grad) in results.items():
        error = np.max(np.abs(grad - exact_grad))
        ratio = "" if name == "jaxmodels" else f"  ({seconds / ours_time:.2f}x the time of jaxmodels)"
        print(
            f"  {name:10s} {seconds * 1e3:8.2f} ms   loss rel. error {abs(loss - exact_loss) / exact_loss:.1e}"
            f"   max |grad error| {error:.1e}{ratio}"
        )


if __name__ == "__main__":
    main()
