"""python -m trainers.sample CONFIG.yaml --workdir DIR --labels 0,1,2 [options] [dotted.key=value ...]
   python -m trainers.sample CONFIG.yaml --weights DiT-XL-2-256x256.pt --labels 0,1,2 --out OUT [options]

Draws class-conditional samples from a diffusion run's checkpoint (the EMA weights
when it has them) or from upstream DiT weights, batch-sharded over all devices, and
writes OUT.png (a grid, one row per label) and OUT.npz (`samples` (N, H, W, C) in the
model's space: [-1, 1] pixels, or latents for a latent DiT; `labels`).
"""

import dataclasses
import os
import sys

from trainers.cli import command


def _add_arguments(p):
    p.add_argument("--checkpoint", type=int, default=None, help="step to sample from (default: newest)")
    p.add_argument("--labels", required=True, help="comma-separated class labels, one grid row each")
    p.add_argument("--per_label", type=int, default=8, help="samples per label")
    p.add_argument("--cfg_scale", type=float, default=None, help="guidance scale (default: the config's)")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default=None, help="default: the config's")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (respaced; default: the config's)")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta (default: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output path without extension (default: DIR/samples_<step>)")


@command
def main(argv=None):
    import launch
    from trainers.config import parse_command_line

    args, cfg = parse_command_line("python -m trainers.sample", __doc__, argv, _add_arguments, weights=True)
    if not (args.out or args.workdir):
        sys.exit("give --out (or --workdir): where the samples go")
    if cfg.task != "diffusion":
        sys.exit(f"{args.config}: task is {cfg.task!r}; sampling needs a diffusion config")
    try:
        labels = [int(v) for v in args.labels.split(",")]
    except ValueError:
        sys.exit(f"--labels {args.labels!r}: expected comma-separated integers")
    df = cfg.diffusion
    sampler = args.sampler or df.sampler
    respacing = (
        df.sample_respacing if args.steps is None else (f"ddim{args.steps}" if sampler == "ddim" else str(args.steps))
    )
    df = dataclasses.replace(
        df,
        sampler=sampler,
        sample_respacing=respacing,
        cfg_scale=df.cfg_scale if args.cfg_scale is None else args.cfg_scale,
        eta=df.eta if args.eta is None else args.eta,
    )
    cfg = dataclasses.replace(cfg, diffusion=df)
    launch.initialize()
    import jax
    import numpy as np

    from trainers import files, sharding
    from trainers.checkpoint import restore_or_load
    from trainers.loop import Trainer
    from trainers.pictures import sample_grid_png

    trainer = Trainer(cfg)
    task = trainer.task
    bad = [y for y in labels if not 0 <= y < task.num_classes]
    if bad:
        sys.exit(f"--labels: {bad} not in 0..{task.num_classes - 1}")
    step, state = restore_or_load(trainer, args.workdir, args.checkpoint, args.weights)
    params = state.inference_params
    y = np.repeat(np.asarray(labels, np.int32), args.per_label)
    pad = -len(y) % sharding.batch_divisor(trainer.mesh)
    with trainer.context():
        samples = task.sample(
            params, np.concatenate([y, np.zeros(pad, np.int32)]), jax.random.PRNGKey(args.seed), trainer.mesh
        )[: len(y)]
    out = args.out or os.path.join(args.workdir, f"samples_{step}")
    source = os.path.basename(args.weights) if args.weights else f"step {step}"
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        files.write_npz(out + ".npz", samples=samples, labels=y)
        sample_grid_png(
            out + ".png",
            samples,
            args.per_label,
            row_labels=labels,
            title=f"{source}: {sampler} {respacing}, guidance {df.cfg_scale}",
        )
    print(f"wrote {out}.png and {out}.npz ({len(y)} samples, {source})", flush=True)


if __name__ == "__main__":
    main()
