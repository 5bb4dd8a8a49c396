"""ADM's evaluation of generated images: Inception Score, FID, sFID, precision and recall.

    python -m trainers.fid SAMPLES.npz REFERENCE.npz [--inception WEIGHTS] [--out metrics.json]
    python -m trainers.fid IMAGES.npz --stats REFERENCE.npz      # a reference batch with its statistics

Both files are in ADM's reference-batch format: `arr_0`, (N, H, W, 3) uint8 images (what
`trainers.sample` writes; ADM's VIRTUAL_imagenet256_labeled.npz). The reference's
statistics (`mu`, `sigma`, `mu_s`, `sigma_s`) are read where the file has them, as ADM's
evaluator does, else computed from its images; the precision and recall use its images'
features, read from the file where `--stats` stored them (`pool`, `spatial`) beside the
statistics, else computed. Features come from pytorch-fid's Inception-v3 (`--inception`: its
pt_inception-2015-12-05-6726825d.pth, or the same weights as .safetensors), in batches
spread over this process's devices. pytorch-fid resizes to 299 x 299 in PyTorch's
bilinear way where ADM's TensorFlow graph uses its own, so the numbers can differ from
ADM's in the last digits.
"""

import argparse
import json

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmodels import inception
from trainers import files
from trainers.cli import InputError, command, read_weights
from trainers.progress import progress

DEFAULT_WEIGHTS = "data/pt_inception-2015-12-05-6726825d.pth"


def read_images(path: str) -> np.ndarray:
    """arr_0 of a reference-batch .npz: (N, H, W, 3) uint8, or an InputError naming what is wrong."""
    try:
        with np.load(path) as f:
            if "arr_0" not in f.files:
                raise InputError(f"{path}: no arr_0 (the images); it holds {', '.join(f.files) or 'nothing'}")
            images = f["arr_0"]
    except (OSError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"cannot read {path} as .npz: {e}") from e
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or not len(images):
        raise InputError(f"{path}: arr_0 is {images.dtype} {images.shape}; expected (N, H, W, 3) uint8 images")
    return images


NET = inception.create()


@jax.jit
def _features(variables, images):
    return NET.apply(variables, images.astype(np.float32) / 255.0)


class Features:
    """Inception features (pool, logits, spatial) of uint8 images, batch-parallel over the local devices."""

    def __init__(self, weights: str, batch_size: int):
        self.variables = inception.from_torch(read_weights(weights, "Inception weights"), NET)
        mesh = Mesh(np.array(jax.local_devices()), ("batch",))
        self.sharding = NamedSharding(mesh, P("batch"))
        self.batch_size = -(-batch_size // mesh.size) * mesh.size

    def __call__(self, images: np.ndarray, what: str) -> dict:
        outputs = []
        starts = range(0, len(images), self.batch_size)
        for start in progress(starts, len(starts), f"Inception features of {what}"):
            batch = images[start : start + self.batch_size]
            padded = np.concatenate([batch, np.zeros((self.batch_size - len(batch), *batch.shape[1:]), np.uint8)])
            out = _features(self.variables, jax.device_put(padded, self.sharding))
            outputs.append({k: np.asarray(v)[: len(batch)] for k, v in out.items()})
        return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}


def stored_features(path: str):
    """The activations --stats stored in a reference batch ({"pool", "spatial"}), or None."""
    with np.load(path) as f:
        return {k: f[k] for k in ("pool", "spatial")} if {"pool", "spatial"} <= set(f.files) else None


def write_reference(images_path: str, out: str, features: Features) -> None:
    """A reference batch: the images (and labels) of images_path, their statistics and activations."""
    images = read_images(images_path)
    with np.load(images_path) as f:
        labels = {"arr_1": f["arr_1"]} if "arr_1" in f.files else {}
    acts = features(images, images_path)
    (mu, sigma), (mu_s, sigma_s) = inception.statistics(acts["pool"]), inception.statistics(acts["spatial"])
    files.write_npz(
        out,
        arr_0=images,
        **labels,
        mu=mu,
        sigma=sigma,
        mu_s=mu_s,
        sigma_s=sigma_s,
        pool=acts["pool"],
        spatial=acts["spatial"],
    )


def reference_statistics(path: str, features: dict) -> tuple:
    """((mu, sigma), (mu_s, sigma_s)) from the file where it has them, else from its features."""
    with np.load(path) as f:
        if "mu" in f.files:
            return (f["mu"], f["sigma"]), (f["mu_s"], f["sigma_s"])
    return inception.statistics(features["pool"]), inception.statistics(features["spatial"])


def evaluate(samples_path: str, reference_path: str, weights: str, batch_size: int = 100) -> dict:
    samples = read_images(samples_path)
    features = Features(weights, batch_size)
    ours = features(samples, samples_path)
    theirs = stored_features(reference_path) or features(read_images(reference_path), reference_path)
    (mu, sigma), (mu_s, sigma_s) = reference_statistics(reference_path, theirs)
    precision, recall = inception.precision_recall(theirs["pool"], ours["pool"])
    return {
        "inception_score": inception.inception_score(ours["logits"]),
        "fid": inception.frechet_distance(*inception.statistics(ours["pool"]), mu, sigma),
        "sfid": inception.frechet_distance(*inception.statistics(ours["spatial"]), mu_s, sigma_s),
        "precision": precision,
        "recall": recall,
    }


@command
def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m trainers.fid", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("samples", help="generated images (.npz, arr_0); with --stats, the reference images")
    p.add_argument("reference", nargs="?", help="reference batch (.npz, arr_0 and optionally mu/sigma/mu_s/sigma_s)")
    p.add_argument("--stats", help="write SAMPLES as a reference batch with its statistics and activations here")
    p.add_argument("--inception", default=DEFAULT_WEIGHTS, help=f"pytorch-fid's weights (default {DEFAULT_WEIGHTS})")
    p.add_argument("--batch_size", type=int, default=100)
    p.add_argument("--out", help="also write the metrics here as JSON")
    args = p.parse_args(argv)
    if bool(args.stats) == bool(args.reference):
        p.error("give a reference batch to compare with, or --stats OUT to write one")
    if args.stats:
        write_reference(args.samples, args.stats, Features(args.inception, args.batch_size))
        print(f"wrote {args.stats}", flush=True)
        return None
    metrics = evaluate(args.samples, args.reference, args.inception, args.batch_size)
    for name, value in metrics.items():
        print(f"{name}: {value:.6g}")
    if args.out:
        files.write_text(args.out, json.dumps(metrics, indent=2) + "\n")
    return metrics


if __name__ == "__main__":
    main()
