"""Latents of an image folder through the Stable Diffusion VAE, for a latent diffusion model.

    python -m trainers.extract vae CONFIG.yaml --images ROOT --workdir DIR [--splits train] [--flip]

ROOT/<split>/<class>/<image> (the ImageNet layout) -> DIR/<split>/: the VAE's posterior
mean of each image times its scaling factor (0.18215), as the model trains on them
(configs/dit_xl2_imagenet256.yaml: data.source latents, data.path DIR). Images are
resized and centre-cropped to the model's input size x 8 as DiT's train.py
(center_crop_arr: halved with a box filter while twice the size, then bicubic); with
--flip each image also gives the latent of its mirror image (fast-DiT's recipe, a fixed
copy for DiT's random flip). The VAE is diffusion.vae (or --vae).

Every device of every process encodes: each process decodes its rows of each global batch
and writes its own shard files (`p<process>_s<shard>_{latents,labels,indices}.npy`, each
row's image index beside it); `index.json` lists them when the split is complete. A killed
run started again skips the shards every process has written.
"""

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from trainers.cli import InputError, command

KINDS = ("vae",)


def center_crop_arr(path: str, size: int) -> np.ndarray:
    """ADM's (and DiT's) centre crop of an image file to size x size, uint8 RGB."""
    try:
        with Image.open(path) as im:
            image = im.convert("RGB")
    except Exception as e:  # PIL raises many types for a broken file
        raise InputError(f"cannot read image {path}: {e}") from e
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


def extract_split(images_root, out_dir, autoencoder, variables, mesh, size, flip, batch_size, shard_batches, workers):
    """One split's latents into out_dir (see the module's docstring)."""
    import jax
    from jax.experimental import multihost_utils

    from trainers import files, sharding
    from trainers.images import ImageFolderSource
    from trainers.progress import progress

    source = ImageFolderSource(images_root)
    os.makedirs(out_dir, exist_ok=True)
    batch = sharding.batch_sharding(mesh, 4)

    def encode(v, images):
        """The scaled posterior means of the images (and of their mirrors), each split as the batch."""
        x = images.astype(np.float32) / 127.5 - 1.0
        views = (x, x[:, :, ::-1]) if flip else (x,)
        return tuple(autoencoder.apply(v, view, method="encode")[0] * autoencoder.scaling_factor for view in views)

    encode = jax.jit(encode, in_shardings=(None, batch), out_shardings=batch)
    start, stop = sharding.local_batch_rows(mesh, batch_size)
    process = jax.process_index()
    batches = -(-len(source) // batch_size)
    shards = range(-(-batches // shard_batches))
    name = lambda s, what: os.path.join(out_dir, f"p{process}_s{s:05d}_{what}.npy")  # noqa: E731
    # A shard is done when every process has it (each sees only its own files on its own disk).
    have = np.array([os.path.isfile(name(s, "indices")) for s in shards])
    done = multihost_utils.process_allgather(have).reshape(-1, len(shards)).all(0)
    pool = ThreadPoolExecutor(workers)
    todo = [s for s in shards if not done[s]]
    for s in progress(todo, len(todo), f"VAE latents of {images_root}"):
        latents, labels, indices = [], [], []
        for b in range(s * shard_batches, min((s + 1) * shard_batches, batches)):
            rows = np.arange(b * batch_size + start, b * batch_size + stop)
            real = rows[rows < len(source)]
            pixels = list(pool.map(lambda i: center_crop_arr(source[i]["path"], size), real))
            pixels += [np.zeros((size, size, 3), np.uint8)] * (len(rows) - len(real))  # the last batch's padding
            views = encode(variables, sharding.to_global(mesh, {"x": np.stack(pixels)}, batch_size)["x"])
            for view in views:  # this process's rows of each
                mine = np.concatenate([np.asarray(piece.data) for piece in sorted(view.addressable_shards, key=_row)])
                latents.append(mine[: len(real)])
                labels.append(np.array([source[i]["label"] for i in real], np.int32))
                indices.append(real)
        for what, arrays in (("latents", latents), ("labels", labels), ("indices", indices)):  # indices last: done
            files.write_npy(name(s, what), np.concatenate(arrays))
    pool.shutdown()
    multihost_utils.sync_global_devices("latents written")
    if process != 0:
        return None
    listing = [
        {"prefix": f"p{p}_s{s:05d}", "rows": len(np.load(os.path.join(out_dir, f"p{p}_s{s:05d}_indices.npy")))}
        for s in shards
        for p in range(jax.process_count())
    ]
    index = {"shards": listing, "num_classes": source.num_classes, "flip": flip, "image_size": size}
    files.write_text(os.path.join(out_dir, "index.json"), json.dumps(index, indent=1) + "\n")
    return sum(item["rows"] for item in listing)


def _row(shard):
    return shard.index[0].start or 0


@command
def main(argv=None):
    import launch
    from trainers.config import parse_command_line

    def add_arguments(p):
        p.add_argument("--images", required=True, help="image root: <split>/<class>/<image>")
        p.add_argument("--splits", default="train", help="comma-separated splits under --images")
        p.add_argument("--vae", help="the VAE's weights (default: diffusion.vae)")
        p.add_argument("--flip", action="store_true", help="also the latents of the mirrored images")
        p.add_argument("--batch_size", type=int, default=256, help="images per step over all devices")
        p.add_argument("--shard_batches", type=int, default=100, help="steps per shard file (the unit of resuming)")
        p.add_argument("--workers", type=int, default=8, help="threads decoding images in each process")

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in KINDS:
        sys.exit(f"usage: python -m trainers.extract {{{','.join(KINDS)}}} CONFIG.yaml --workdir DIR ...")
    argv = argv[1:]  # what to extract; vae is the one kind so far
    args, cfg = parse_command_line("python -m trainers.extract", __doc__, argv, add_arguments)
    launch.initialize()
    import jax

    from jaxmodels import vae
    from trainers import sharding

    path = args.vae or cfg.diffusion.vae
    if not path:
        raise InputError("give --vae (or diffusion.vae): the VAE's weights")
    autoencoder, variables = vae.load_pretrained(path)
    size = cfg.model.args.get("input_size", 32) * 2 ** (len(autoencoder.block_out_channels) - 1)
    mesh = sharding.make_mesh(data=-1)
    if args.batch_size % mesh.size:
        raise InputError(f"--batch_size {args.batch_size} must be a multiple of the {mesh.size} devices")
    for split in args.splits.split(","):
        n = extract_split(
            os.path.join(args.images, split),
            os.path.join(args.workdir, split),
            autoencoder,
            variables,
            mesh,
            size,
            args.flip,
            args.batch_size,
            args.shard_batches,
            args.workers,
        )
        if jax.process_index() == 0:
            print(f"wrote {n} latents of {split} ({size} x {size} images) to {args.workdir}/{split}", flush=True)


if __name__ == "__main__":
    main()
