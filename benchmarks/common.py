"""Timing and MFU reporting shared by the benchmark scripts."""

import time

import numpy as np

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # bf16 dense, per chip


def time_it(fn, iters, warmup=2):
    """Median seconds of fn() over iters calls, after warm-up calls (compilation, caches)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def report_flops(lowered, seconds, device):
    """Achieved FLOP/s and, on a known GPU, MFU of one step.

    The FLOPs are XLA's cost analysis of the lowered (not yet optimised) step, which is
    the same on every backend: the compiled step's analysis on a GPU leaves out the
    cuBLAS/cuDNN calls, i.e. most of the work.
    """
    flops = (lowered.cost_analysis() or {}).get("flops")
    if not flops:
        return
    achieved = flops / seconds
    peak = next((v for k, v in PEAK_FLOPS.items() if k in device.device_kind), None)
    mfu = f", MFU {achieved / peak:.1%} of {peak / 1e12:.0f} TFLOP/s" if peak and device.platform == "gpu" else ""
    print(f"  jax {flops / 1e9:.1f} GFLOP per step, {achieved / 1e12:.2f} TFLOP/s (XLA cost analysis){mfu}")
