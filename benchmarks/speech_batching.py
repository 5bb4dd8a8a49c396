"""Speech training in batches by duration against fixed padding, on the built-in corpus.

The speech demo (configs/ctc_speech.yaml: batch_size 16, every utterance padded to
max_seconds 3) trained as configured, then the same config with data.batch_seconds =
batch_size x max_seconds (the same padded audio per batch, so the same memory) and the
quartile buckets, for as many steps as see the same number of utterances. Both evaluate
on the held-out voices with the same fixed-shape evaluation. Prints each run's training
examples/s (log windows after the first, which holds the compilations), its padding, its
whole training time and its word error rates, and the ratios.

    python benchmarks/speech_batching.py [--workdir runs/bench_batching]
"""

import argparse
import json
import math
import os
import shutil
import time

import numpy as np

from trainers import config as config_lib
from trainers import sharding
from trainers.loop import Trainer, train


def run(cfg, workdir):
    shutil.rmtree(workdir, ignore_errors=True)
    start = time.time()
    metrics = train(cfg, workdir)
    seconds = time.time() - start
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    rates = [r["train/examples_per_sec"] for r in rows if "train/examples_per_sec" in r][1:]
    return {"examples_per_sec": float(np.median(rates)), "seconds": seconds, **metrics}


def padded_fraction(cfg):
    """The share of the audio in a training batch that is padding, over one epoch's plan."""
    trainer = Trainer(cfg)
    durations = trainer.task.train_source().durations()
    buckets = trainer.task.length_buckets()
    if buckets is None:
        return 1 - durations.mean() / cfg.data.max_seconds, cfg.data.batch_size
    sizes = buckets.batch_sizes(sharding.batch_divisor(trainer.mesh) * cfg.optimizer.grad_accum_steps)
    of = buckets.bucket_of()
    counts = [np.sum(of == b) // n * n for b, n in enumerate(sizes)]  # the records an epoch's batches hold
    padded = sum(c * bound for c, bound in zip(counts, buckets.bounds))
    batches = sum(np.sum(of == b) // n for b, n in enumerate(sizes))
    return 1 - durations.mean() * sum(counts) / padded, sum(counts) / batches


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/ctc_speech.yaml")
    parser.add_argument("--workdir", default="runs/bench_batching")
    args = parser.parse_args()
    fixed_cfg = config_lib.load(args.config, [])
    d = fixed_cfg.data
    by_duration = config_lib.load(args.config, [f"data.batch_seconds={d.batch_size * d.max_seconds}"])
    fixed_padding, fixed_rows = padded_fraction(fixed_cfg)
    duration_padding, duration_rows = padded_fraction(by_duration)
    steps = math.ceil(fixed_cfg.train.steps * fixed_rows / duration_rows)
    overrides = [f"data.batch_seconds={d.batch_size * d.max_seconds}", f"train.steps={steps}"]
    overrides += [f"train.eval_every={steps}", f"train.checkpoint_every={steps}"]
    by_duration = config_lib.load(args.config, overrides)

    results = {}
    for name, cfg, padding, rows in (
        ("fixed padding", fixed_cfg, fixed_padding, fixed_rows),
        ("by duration", by_duration, duration_padding, duration_rows),
    ):
        r = run(cfg, os.path.join(args.workdir, name.replace(" ", "_")))
        results[name] = r
        print(
            f"{name}: {cfg.train.steps} steps of {rows:.1f} utterances, {padding:.0%} padding; "
            f"{r['examples_per_sec']:.1f} examples/s, {r['seconds']:.0f} s in all; "
            f"WER greedy {r['eval/wer_greedy']:.2%}, beam {r['eval/wer_beam']:.2%}",
            flush=True,
        )
    fixed, dynamic = results["fixed padding"], results["by duration"]
    print(
        f"by duration / fixed padding: {dynamic['examples_per_sec'] / fixed['examples_per_sec']:.2f}x examples/s, "
        f"{fixed['seconds'] / dynamic['seconds']:.2f}x in all"
    )


if __name__ == "__main__":
    main()
