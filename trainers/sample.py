"""python -m trainers.sample CONFIG.yaml --workdir DIR --labels 0,1,2 [options] [dotted.key=value ...]
   python -m trainers.sample CONFIG.yaml --weights DiT-XL-2-256x256.pt --labels 0,1,2 --out OUT [options]
   python -m trainers.sample CONFIG.yaml (--workdir DIR | --weights W) --num_samples 50000 --out samples.npz

Draws class-conditional samples from a diffusion run's checkpoint (the EMA weights
when it has them) or from upstream DiT weights, batch-sharded over all devices of all
processes.

With --labels: OUT.png (a grid, one row per label; a latent model's samples decoded
through the VAE where one is given) and OUT.npz (`samples` (N, H, W, C) in the model's
space: [-1, 1] pixels, or latents for a latent DiT; `labels`).

With --num_samples: an evaluation batch in ADM's format (`arr_0` (N, H, W, 3) uint8
images, `arr_1` labels, uniform over the classes from --seed), as DiT's sample_ddp.py
writes for `trainers.fid`. A latent model's samples are decoded through the VAE
(--vae or diffusion.vae) from latents / its scaling factor. The work goes in global
batches of --batch_size, each kept in OUT.parts/ as it is done, so a killed run started
again skips the batches it has; a batch's noise depends only on the seed and its number,
so one process or several give the same images.
"""

import dataclasses
import os
import sys

from trainers.cli import command


def _add_arguments(p):
    p.add_argument("--checkpoint", type=int, default=None, help="step to sample from (default: newest)")
    p.add_argument("--labels", help="comma-separated class labels, one grid row each")
    p.add_argument("--num_samples", type=int, help="an evaluation batch of this many samples instead of a grid")
    p.add_argument("--batch_size", type=int, default=256, help="--num_samples: samples per step over all devices")
    p.add_argument("--vae", help="the VAE a latent model's samples are decoded with (default: diffusion.vae)")
    p.add_argument("--per_label", type=int, default=8, help="samples per label")
    p.add_argument("--cfg_scale", type=float, default=None, help="guidance scale (default: the config's)")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default=None, help="default: the config's")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (respaced; default: the config's)")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta (default: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", default=None, help="a grid: path without extension (default: DIR/samples_<step>); a batch: .npz path"
    )


@command
def main(argv=None):
    import launch
    from trainers.config import parse_command_line

    args, cfg = parse_command_line("python -m trainers.sample", __doc__, argv, _add_arguments, weights=True)
    if (args.labels is None) == (args.num_samples is None):
        sys.exit("give --labels (a grid) or --num_samples (an evaluation batch)")
    if not (args.out or args.workdir) or (args.num_samples and not args.out):
        sys.exit("give --out: where the samples go")
    if cfg.task != "diffusion":
        sys.exit(f"{args.config}: task is {cfg.task!r}; sampling needs a diffusion config")
    labels = []
    if args.labels is not None:
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
    if args.num_samples:
        write_batch(trainer, params, args.num_samples, args.batch_size, args.seed, args.vae or df.vae, args.out)
        return
    y = np.repeat(np.asarray(labels, np.int32), args.per_label)
    padded = np.concatenate([y, np.zeros(-len(y) % sharding.batch_divisor(trainer.mesh), np.int32)])
    with trainer.context():
        samples = task.sample(params, padded, jax.random.PRNGKey(args.seed), trainer.mesh)
    # The picture shows images: a latent model's samples through the VAE where one is given.
    vae_path = args.vae or df.vae
    pictures = latent_decoder(trainer.mesh, vae_path)(samples)[: len(y)] if vae_path else samples[: len(y)]
    samples = samples[: len(y)]
    out = args.out or os.path.join(args.workdir, f"samples_{step}")
    source = os.path.basename(args.weights) if args.weights else f"step {step}"
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        files.write_npz(out + ".npz", samples=samples, labels=y)
        sample_grid_png(
            out + ".png",
            pictures,
            args.per_label,
            row_labels=labels,
            title=f"{source}: {sampler} {respacing}, guidance {df.cfg_scale}",
        )
    print(f"wrote {out}.png and {out}.npz ({len(y)} samples, {source})", flush=True)


def to_uint8(images):
    """[-1, 1] -> uint8 as DiT's sample_ddp.py: 127.5 x + 128, clipped, truncated."""
    import numpy as np

    return np.clip(127.5 * np.asarray(images) + 128.0, 0, 255).astype(np.uint8)


def latent_decoder(mesh, vae_path: str):
    """latents (a whole batch, on every process) -> images in [-1, 1] through the VAE at
    vae_path, batch-sharded over mesh (each process puts its rows back on its devices)."""
    import jax

    from jaxmodels import vae
    from trainers import sharding

    autoencoder, variables = vae.load_pretrained(vae_path)
    batch = sharding.batch_sharding(mesh, 4)
    decode = jax.jit(
        lambda v, z: autoencoder.apply(v, z / autoencoder.scaling_factor, method="decode"),
        in_shardings=(None, batch),
        out_shardings=batch,
    )

    def run(latents):
        start, stop = sharding.local_batch_rows(mesh, len(latents))
        latents = sharding.to_global(mesh, {"z": latents[start:stop]}, len(latents))["z"]
        return sharding.host_copy(decode(variables, latents))

    return run


def write_batch(trainer, params, num_samples: int, batch_size: int, seed: int, vae_path: str, out: str):
    """ADM's evaluation batch of num_samples images at `out`, in resumable global batches."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    from trainers import files, sharding
    from trainers.cli import InputError
    from trainers.progress import progress

    task, mesh = trainer.task, trainer.mesh
    if batch_size < 1 or batch_size % sharding.batch_divisor(mesh):
        raise InputError(
            f"--batch_size {batch_size} must be a positive multiple of the {sharding.batch_divisor(mesh)} devices"
        )
    decode = None
    if trainer.cfg.data.source == "latents":
        if not vae_path:
            raise InputError("latent samples need the VAE to become images: give --vae (or diffusion.vae)")
        decode = latent_decoder(mesh, vae_path)
    labels = np.random.default_rng(seed).integers(0, task.num_classes, num_samples).astype(np.int32)
    parts = out + ".parts"
    os.makedirs(parts, exist_ok=True)
    chunks = range(-(-num_samples // batch_size))
    part = lambda c: os.path.join(parts, f"{c:06d}.npz")  # noqa: E731
    # Every process takes the same batches: those process 0 does not find done.
    done = multihost_utils.broadcast_one_to_all(np.array([os.path.isfile(part(c)) for c in chunks]))
    for c in progress([c for c in chunks if not done[c]], int(len(chunks) - done.sum()), "sample batches"):
        y = labels[c * batch_size : (c + 1) * batch_size]
        padded = np.concatenate([y, np.zeros(batch_size - len(y), np.int32)])
        with trainer.context():
            samples = task.sample(params, padded, jax.random.fold_in(jax.random.PRNGKey(seed), c), mesh)
            if decode is not None:
                samples = decode(samples)
        if jax.process_index() == 0:
            files.write_npz(part(c), arr_0=to_uint8(samples[: len(y)]), arr_1=y)
    multihost_utils.sync_global_devices("samples written")
    if jax.process_index() == 0:
        images = [np.load(part(c))["arr_0"] for c in chunks]
        files.write_npz(out, arr_0=np.concatenate(images), arr_1=labels)
        for c in chunks:
            os.remove(part(c))
        os.rmdir(parts)
    print(f"wrote {out} ({num_samples} samples)", flush=True)


if __name__ == "__main__":
    main()
