"""TensorBoard scalars: trainers.tensorboard against tensorboardX, each in a fresh process.

    python benchmarks/tensorboard_events.py [--steps 1000 --tags 8]

Times what a training process pays: importing the writer, opening an event file, and
writing --steps events of --tags scalars each (flushed per step, as trainers/metrics.py
does). tensorboardX imports torch when torch is installed; the ratio is tensorboardX's
time over ours.
"""

import argparse
import subprocess
import sys
import tempfile

OURS = """
import time; t = time.perf_counter()
from trainers.tensorboard import EventWriter
w = EventWriter({logdir!r})
for step in range({steps}):
    w.scalars(step, {{f"train/metric{{k}}": 0.5 * k + step for k in range({tags})}}); w.flush()
w.close(); print(time.perf_counter() - t)
"""

TENSORBOARDX = """
import time; t = time.perf_counter()
from tensorboardX import SummaryWriter
w = SummaryWriter({logdir!r})
for step in range({steps}):
    for k in range({tags}):
        w.add_scalar(f"train/metric{{k}}", 0.5 * k + step, step)
    w.flush()
w.close(); print(time.perf_counter() - t)
"""


def seconds(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--tags", type=int, default=8)
    args = parser.parse_args()
    times = {}
    for name, code in (("trainers.tensorboard", OURS), ("tensorboardX", TENSORBOARDX)):
        with tempfile.TemporaryDirectory() as logdir:
            times[name] = min(seconds(code.format(logdir=logdir, steps=args.steps, tags=args.tags)) for _ in range(3))
        print(f"{name}: {times[name]:.3f} s (import, open, {args.steps} steps x {args.tags} scalars)")
    print(f"tensorboardX / ours: {times['tensorboardX'] / times['trainers.tensorboard']:.1f}x")


if __name__ == "__main__":
    main()
