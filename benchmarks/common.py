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


def report_flops(compiled, seconds, device):
    """Achieved FLOP/s from XLA's cost analysis of `compiled`, and MFU on a known GPU."""
    cost = compiled.cost_analysis()
    flops = (cost or {}).get("flops") if isinstance(cost, dict) else None
    if not flops:
        return
    achieved = flops / seconds
    peak = next((v for k, v in PEAK_FLOPS.items() if k in device.device_kind), None)
    mfu = f", MFU {achieved / peak:.1%} of {peak / 1e12:.0f} TFLOP/s" if peak and device.platform == "gpu" else ""
    print(f"  jax achieved {achieved / 1e12:.3f} TFLOP/s (XLA cost analysis){mfu}")
