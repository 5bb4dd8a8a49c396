"""The codec's adversarial train step (trainers' task codec) on synthetic audio.

    python benchmarks/codec_train_step.py [--config configs/encodec_24khz.yaml --batch 64 --iters 5] [key=value ...]

Times the whole jitted step (codec forward, discriminator step, balanced generator
losses, both Adam updates, EMA) of a config on one device with random audio crops, and
prints steps/s, seconds of audio per second and, from XLA's cost analysis of the lowered
step, FLOP/s and (on a known GPU) MFU. No PyTorch reference: AudioCraft's solver is not
runnable without its data pipeline and dependencies.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import report_flops, time_it


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/encodec_24khz.yaml")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("overrides", nargs="*", help="dotted.key=value")
    args = parser.parse_args()

    import jax

    from trainers import config as config_lib
    from trainers import sharding
    from trainers.loop import Trainer

    cfg = config_lib.load(args.config, [f"data.batch_size={args.batch}", "mesh.data=1", *args.overrides])
    trainer = Trainer(cfg, jax.devices()[:1])
    state = trainer.init(0)
    batch = trainer.task.example_batch(args.batch)
    batch["audio"] = (0.1 * np.random.default_rng(0).standard_normal(batch["audio"].shape)).astype(np.float32)
    batch = sharding.to_global(trainer.mesh, batch, args.batch)
    with trainer.context():
        lowered = trainer.train_step.lower(state, batch)
        step = lowered.compile()
    holder = [state]

    def run():
        holder[0], metrics = step(holder[0], batch)
        jax.block_until_ready(metrics)

    seconds = time_it(run, args.iters)
    audio = args.batch * trainer.task.train_transform.length / trainer.task.config.sample_rate
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({dev.platform}); {args.config} {' '.join(args.overrides)}")
    print(
        f"  train step, batch {args.batch}: {seconds * 1e3:.1f} ms, {1 / seconds:.2f} steps/s, "
        f"{audio / seconds:.1f} s of audio per second"
    )
    report_flops(lowered, seconds, dev)


if __name__ == "__main__":
    main()
