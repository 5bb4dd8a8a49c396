"""Metrics on process 0: metrics.jsonl, TensorBoard event files, and a progress display."""
import json
import os
import sys
import time

import jax


class MetricsWriter:
    def __init__(self, workdir: str, total_steps: int, start_step: int = 0):
        self.active = jax.process_index() == 0
        if not self.active:
            return
        from tensorboardX import SummaryWriter

        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True)

    def write(self, step: int, metrics: dict):
        if not self.active:
            return
        metrics = {k: float(v) for k, v in metrics.items()}
        self.jsonl.write(json.dumps({"step": step, **metrics, "time": time.time()}) + "\n")
        self.jsonl.flush()
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)
        self.tb.flush()
        summary = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        if self.bar is not None:
            self.bar.set_postfix_str(summary, refresh=False)
            self.bar.write(f"step {step}: {summary}")
        else:
            print(f"step {step}: {summary}", flush=True)

    def advance(self, steps: int = 1):
        if self.active and self.bar is not None:
            self.bar.update(steps)

    def close(self):
        if self.active:
            self.jsonl.close()
            self.tb.close()
            if self.bar is not None:
                self.bar.close()
