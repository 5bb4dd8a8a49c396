"""Timing and MFU reporting shared by the benchmark scripts."""

import collections
import re
import time

import numpy as np

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # bf16 dense, per chip


def peak_flops(device):
    """The bf16 dense FLOP/s of a known GPU, else None (no MFU is reported)."""
    if device.platform != "gpu":
        return None
    return next((v for k, v in PEAK_FLOPS.items() if k in device.device_kind), None)


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
    cuBLAS/cuDNN calls, i.e. most of the work. A loop's body counts once, so a model
    with scanned layers reports its own analytic count instead.
    """
    flops = (lowered.cost_analysis() or {}).get("flops")
    if not flops:
        print(f"  (XLA gave no FLOP count on {device.platform}: lower the same step on the CPU for it)")
        return
    achieved = flops / seconds
    peak = peak_flops(device)
    mfu = f", MFU {achieved / peak:.1%} of {peak / 1e12:.0f} TFLOP/s" if peak else ""
    print(f"  jax {flops / 1e9:.1f} GFLOP per step, {achieved / 1e12:.2f} TFLOP/s (XLA cost analysis){mfu}")


def report_bandwidth(compiled, seconds):
    """Device-memory traffic of one step: the bytes the compiled program's ops read and
    write (XLA's cost analysis after fusion, library calls counted by their operands and
    results), over the step time."""
    moved = (compiled.cost_analysis() or {}).get("bytes accessed")
    if moved:
        print(f"  jax {moved / 1e9:.2f} GB moved per step (compiled cost analysis): {moved / seconds / 1e12:.2f} TB/s")


def device_time_by_op(fn, top=12):
    """Run fn() once under jax.profiler and print the XLA ops that took the most device time.

    Reads the profiler's Perfetto trace: on a GPU its "XLA Ops" rows (HLO ops, kernels
    attributed; the stream rows where there are none), on the CPU the ops XLA's threads
    ran, with the share of the wall time each kind of op took. Returns the total seconds
    listed.
    """
    import glob
    import gzip
    import json
    import tempfile

    import jax

    with tempfile.TemporaryDirectory() as log_dir:
        with jax.profiler.trace(log_dir, create_perfetto_trace=True):
            fn()
        (path,) = glob.glob(f"{log_dir}/**/perfetto_trace.json.gz", recursive=True)
        with gzip.open(path) as f:
            events = json.load(f)["traceEvents"]
    meta = [e for e in events if e.get("ph") == "M"]
    processes = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    on_gpu = {k: v for k, v in threads.items() if "/device:GPU" in processes.get(k[0], "")}
    rows = {k for k, v in on_gpu.items() if v == "XLA Ops"} or {k for k, v in on_gpu.items() if v.startswith("Stream")}
    if not rows:
        rows = {k for k, v in threads.items() if v.startswith("tf_XLA")}
    ops = [  # (name, start, duration) in microseconds; the host's runtime calls are not ops
        (e["name"], e["ts"], e.get("dur", 0))
        for e in events
        if e.get("ph") == "X" and (e["pid"], e.get("tid")) in rows
        if "::" not in e["name"] and not e["name"].startswith("end:")
    ]
    totals, counts = collections.Counter(), collections.Counter()
    for name, _, duration in ops:
        totals[name] += duration / 1e6
        counts[name] += 1
    kinds = collections.Counter()
    for name, seconds in totals.items():
        kinds[_kind(name)] += seconds
    total, wall = sum(totals.values()), _wall_time_by_kind(ops)
    busy = sum(wall.values())
    print(f"  profile: {total * 1e3:.1f} ms of device ops ({sum(counts.values())} runs), {busy * 1e3:.1f} ms of wall")
    print("  time with an op running; by kind, summed over threads and as a share of that wall time:")
    for name, seconds in kinds.most_common(top):
        share = f"{wall[name] * 1e3:8.2f} ms {wall[name] / max(busy, 1e-12):6.1%}"
        print(f"    {seconds * 1e3:8.2f} ms {share}  {name[:90]}")
    print("  the largest ops (summed):")
    for name, seconds in totals.most_common(top):
        print(f"    {seconds * 1e3:8.2f} ms {seconds / max(total, 1e-12):6.1%} x{counts[name]:<5d} {name[:90]}")
    return total


def _kind(op_name):
    return re.sub(r"[.:]\d+$", "", op_name)


def _wall_time_by_kind(ops):
    """Seconds of wall time per op kind, each instant shared equally among the ops running then.

    XLA:CPU runs independent ops on its threads at once, so per-op sums count overlapping time
    more than once and overstate what a kind costs the step; this split adds up to the time
    during which any op ran.
    """
    edges = sorted(
        [(start, 1, i) for i, (_, start, _) in enumerate(ops)]
        + [(start + duration, -1, i) for i, (_, start, duration) in enumerate(ops)]
    )
    kinds = [_kind(name) for name, _, _ in ops]
    wall, running, last = collections.Counter(), set(), None
    for time_us, change, i in edges:
        for j in running:
            wall[kinds[j]] += (time_us - last) / len(running) / 1e6
        last = time_us
        if change > 0:
            running.add(i)
        else:
            running.discard(i)
    return wall
