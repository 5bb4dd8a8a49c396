"""Metrics on process 0: metrics.jsonl, TensorBoard event files, and a progress display."""

import json
import os
import sys
import time

import jax

from trainers import files
from trainers.tensorboard import EventWriter


def read_rows(path: str) -> list:
    """The rows of a metrics.jsonl; a last line cut short by a kill is left out."""
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


class MetricsWriter:
    """Appends to metrics.jsonl. A resumed run first drops the rows past the step it resumed
    from (written after that checkpoint, they are written again), so each step has one row
    of train and one of eval metrics however often the run was interrupted."""

    def __init__(self, workdir: str, total_steps: int, start_step: int = 0):
        self.active = jax.process_index() == 0
        path = os.path.join(workdir, "metrics.jsonl")
        self.rows = [r for r in read_rows(path) if r.get("step", 0) <= start_step]
        if not self.active:
            return
        files.write_text(path, "".join(json.dumps(r) + "\n" for r in self.rows))
        self.jsonl = open(path, "a")
        self.tb = EventWriter(os.path.join(workdir, "tensorboard"))
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
        self.tb.scalars(step, metrics)
        self.tb.flush()
        summary = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        if self.bar is not None:
            self.bar.set_postfix_str(summary, refresh=False)
            self.bar.write(f"step {step}: {summary}")
        else:
            print(f"step {step}: {summary}", flush=True)

    def last_eval(self) -> dict:
        """The eval metrics of the last step evaluated (a finished run asked to train again)."""
        rows = [r for r in self.rows if any(k.startswith("eval/") for k in r)]
        return {k: v for k, v in rows[-1].items() if k.startswith("eval/")} if rows else {}

    def advance(self, steps: int = 1):
        if self.active and self.bar is not None:
            self.bar.update(steps)

    def close(self):
        if self.active:
            self.jsonl.close()
            self.tb.close()
            if self.bar is not None:
                self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
