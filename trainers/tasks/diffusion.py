"""Class-conditional diffusion (DiT): the hybrid loss on random timesteps, and guided samples.

Data is pixels (the digits, or an image folder; scaled to [-1, 1]) or precomputed
latents: `data.path/<split>.npz` holding `latents` (N, h, w, C) float, already scaled
as the model should see them (DiT: the Stable Diffusion VAE's mean latent times
0.18215), and `labels` (N,) int.

Eval reports the loss terms on the eval split (fixed timesteps and noise), then draws
`samples_per_class` guided samples of every class, writes them as a grid (one row per
class), and, with a classifier configured, the share of samples it assigns to their
conditioning class.
"""

import json
import os
import zipfile
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.diffusion import create_diffusion
from trainers.cli import InputError
from trainers.data.images import DigitsSource, ImageDataConfig, ImageFolderSource, ImageTransform
from trainers.tasks import SplitSources


@dataclass
class DiffusionConfig:
    """Gaussian diffusion (task: diffusion): training schedule, and how eval samples are drawn."""

    noise_schedule: Literal["linear", "cosine"] = "linear"
    diffusion_steps: int = 1000
    sampler: Literal["ddpm", "ddim"] = "ddpm"
    sample_respacing: str = "250"  # upstream's spec: "250", "ddim50", "10,15,20", ...
    eta: float = 0.0  # ddim
    cfg_scale: float = 4.0  # classifier-free guidance; 1.0 samples without it
    guide_all_channels: bool = False  # upstream guides the first 3 output channels only
    samples_per_class: int = 8  # eval grid: one row per class (scored by evals: classifier_agreement)
    # The SD VAE's weights for a latent model (diffusers' file, with its config.json beside
    # it, or the original .ckpt): trainers.sample decodes the latents to images through it.
    vae: str = ""


SECTIONS = {"data": ImageDataConfig, "diffusion": DiffusionConfig}


class LatentSource:
    """Precomputed latents: <path>/<split>.npz with `latents` (N, h, w, C) and `labels` (N,),
    or the folder <path>/<split>/ that trainers.extract writes (index.json and its shards,
    memory-mapped: a process reads from disk only the rows it trains on)."""

    def __init__(self, path: str, split: str):
        folder = os.path.join(path, split)
        if os.path.isfile(os.path.join(folder, "index.json")):
            self._open_index(folder)
            return
        file = os.path.join(path, f"{split}.npz")
        if not os.path.isfile(file):
            raise FileNotFoundError(f"latents not found: {file}, or {folder}/index.json (trainers.extract)")
        try:
            with np.load(file) as f:
                missing = {"latents", "labels"} - set(f.files)
                if missing:
                    raise InputError(f"{file}: missing {sorted(missing)} (has {f.files})")
                self._parts = [(f["latents"].astype(np.float32), f["labels"].astype(np.int32))]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # a truncated or foreign file
            if isinstance(e, InputError):
                raise
            raise InputError(f"{file} cannot be read as .npz: {e or type(e).__name__}") from e
        latents, labels = self._parts[0]
        if latents.ndim != 4 or len(labels) != len(latents):
            raise InputError(
                f"{file}: latents {latents.shape} should be (N, h, w, C) with N labels (got {labels.shape})"
            )
        self.files, self.num_classes = None, int(labels.max()) + 1
        self.starts = np.array([0, len(labels)])

    def _open_index(self, folder):
        with open(os.path.join(folder, "index.json")) as f:
            index = json.load(f)
        self.files = [
            tuple(os.path.join(folder, f"{s['prefix']}_{w}.npy") for w in ("latents", "labels"))
            for s in index["shards"]
        ]
        self.starts = np.cumsum([0] + [s["rows"] for s in index["shards"]])
        self.num_classes, self._parts = index["num_classes"], None

    def _shards(self):
        if self._parts is None:  # opened in the process that reads (a grain worker), never pickled
            try:
                self._parts = [tuple(np.load(f, mmap_mode="r") for f in pair) for pair in self.files]
            except (OSError, ValueError) as e:
                raise InputError(f"latent shard of {os.path.dirname(self.files[0][0])}: {e}") from e
        return self._parts

    def __getstate__(self):
        return {**self.__dict__, "_parts": None} if self.files else self.__dict__

    def __len__(self):
        return int(self.starts[-1])

    def __getitem__(self, i):
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        latents, labels = self._shards()[k]
        j = i - self.starts[k]
        return {"x": np.asarray(latents[j], np.float32), "label": np.int32(labels[j]), "mask": np.float32(1.0)}


class _ToSignal:
    """Image record -> {"x": float32 in [-1, 1]} with the model's channels (1: grey), after the image transform."""

    def __init__(self, image_transform, channels: int):
        if channels not in (1, 3):
            raise ValueError(f"pixel-space diffusion needs in_channels 1 (grey) or 3 (RGB), not {channels}")
        self.image_transform, self.channels = image_transform, channels

    def __call__(self, record, rng):
        r = self.image_transform(record, rng)
        x = r["image"].astype(np.float32) / 127.5 - 1.0
        if self.channels == 1:
            x = x.mean(axis=-1, keepdims=True)
        return {"x": x, "label": r["label"], "mask": r["mask"]}


def _latent_identity(record, rng):
    return record


class DiffusionTask(SplitSources):
    def __init__(self, cfg):
        from jaxmodels.dit import create

        self.cfg = cfg
        d, df = cfg.data, cfg.diffusion
        num_classes = cfg.model.args.get("num_classes") or self.train_source().num_classes
        self.model = create(
            cfg.model.name,
            **{**cfg.model.args, "num_classes": num_classes},
            dtype=jnp.dtype(cfg.train.compute_dtype),
            remat=cfg.train.remat,
        )
        if d.source != "latents" and self.model.input_size != d.image_size:
            raise ValueError(f"model input_size {self.model.input_size} != data.image_size {d.image_size}")
        self.num_classes = num_classes
        self.diffusion = create_diffusion("", df.noise_schedule, self.model.learn_sigma, df.diffusion_steps)
        self.sampling = create_diffusion(
            df.sample_respacing, df.noise_schedule, self.model.learn_sigma, df.diffusion_steps
        )
        if d.source == "latents":
            self.train_transform = self.eval_transform = _latent_identity
        else:
            common = dict(image_size=d.image_size, on_bad_image=d.on_bad_image, crop_pct=1.0)
            c = self.model.in_channels
            self.train_transform = _ToSignal(
                ImageTransform(train=True, random_resized_crop=False, hflip=d.hflip, **common), c
            )
            self.eval_transform = _ToSignal(ImageTransform(train=False, **common), c)

    def make_source(self, split):
        d = self.cfg.data
        if d.source == "digits":
            return DigitsSource(split, d.image_size, d.holdout_fraction)
        if d.source == "latents":
            return LatentSource(d.path, split)
        return ImageFolderSource(os.path.join(d.path, split))

    def example_batch(self, n):
        m = self.model
        return {
            "x": np.zeros((n, m.input_size, m.input_size, m.in_channels), np.float32),
            "label": np.zeros((n,), np.int32),
            "mask": np.ones((n,), np.float32),
        }

    def init(self, rng, batch):
        n = batch["x"].shape[0]
        return self.model.init({"params": rng}, batch["x"], jnp.zeros((n,)), batch["label"])

    def convert_weights(self, state_dict):
        from jaxmodels.dit import from_torch

        return from_torch(state_dict, self.model)

    def _terms(self, params, batch, rng, train):
        k_t, k_noise, k_drop = jax.random.split(rng, 3)
        x = batch["x"]
        t = jax.random.randint(k_t, (x.shape[0],), 0, self.diffusion.num_timesteps)
        noise = jax.random.normal(k_noise, x.shape, x.dtype)

        def model_fn(x_t, timesteps):
            out = self.model.apply(
                {"params": params}, x_t, timesteps, batch["label"], train=train, rngs={"dropout": k_drop}
            )
            return out.astype(jnp.float32)

        return self.diffusion.training_losses(model_fn, x, t, noise)

    def loss(self, params, batch, rng, step):
        terms = self._terms(params, batch, rng, train=True)
        mask = batch["mask"]
        n = jnp.maximum(mask.sum(), 1.0)
        metrics = {f"train/{k}": (v * mask).sum() / n for k, v in terms.items() if k != "loss"}
        return (terms["loss"] * mask).sum() / n, metrics

    def eval_outputs(self, params, batch):
        # The same timesteps and noise for every eval batch: a fixed, comparable estimate.
        return self._terms(params, batch, jax.random.PRNGKey(0), train=False)

    def eval_metrics(self, outputs):
        return {k: float(np.mean(v.astype(np.float64))) for k, v in outputs.items()}

    def generate(self, params, mesh):
        """Guided samples of every class, in the model's [-1, 1] space, and their labels."""
        from trainers import sharding

        df = self.cfg.diffusion
        labels = np.repeat(np.arange(self.num_classes, dtype=np.int32), df.samples_per_class)
        n = len(labels)
        pad = -n % sharding.batch_divisor(mesh)
        y = np.concatenate([labels, np.zeros(pad, np.int32)])
        samples = self.sample(params, y, jax.random.PRNGKey(self.cfg.seed), mesh)[:n]
        return {}, {"samples": samples, "sample_labels": labels}

    def sample(self, params, labels, key, mesh=None):
        """Samples for `labels` with the configured sampler and guidance, batch-sharded over `mesh`."""
        df, m = self.cfg.diffusion, self.model
        guided = df.cfg_scale != 1.0
        k_init, k_steps = jax.random.split(key)

        def run(params, y, k_init, k_steps):
            shape = (y.shape[0], m.input_size, m.input_size, m.in_channels)
            x_T = jax.random.normal(k_init, shape)
            if guided:  # [conditional; null-label] halves, as upstream's sample.py
                x_T = jnp.concatenate([x_T, x_T])
                y = jnp.concatenate([y, jnp.full_like(y, self.num_classes)])

                def model_fn(x, ts):
                    return m.apply(
                        {"params": params},
                        x,
                        ts,
                        y,
                        df.cfg_scale,
                        df.guide_all_channels,
                        method=type(m).forward_with_cfg,
                    ).astype(jnp.float32)
            else:

                def model_fn(x, ts):
                    return m.apply({"params": params}, x, ts, y).astype(jnp.float32)

            x = self.sampling.sample(model_fn, x_T, sampler=df.sampler, eta=df.eta, key=k_steps)
            return x[: x.shape[0] // 2] if guided else x

        if mesh is None:
            return np.asarray(jax.jit(run)(params, labels, k_init, k_steps))
        from trainers import sharding

        start, stop = sharding.local_batch_rows(mesh, len(labels))  # each process gives its rows
        labels = sharding.to_global(mesh, {"y": np.asarray(labels)[start:stop]}, len(labels))["y"]
        with jax.set_mesh(mesh):
            out = jax.jit(
                run,
                in_shardings=(None, sharding.batch_sharding(mesh, 1), None, None),
                out_shardings=sharding.batch_sharding(mesh, 4),
            )(params, labels, k_init, k_steps)
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(out, tiled=True))

    def write_artifacts(self, workdir, outputs, step):
        from trainers.pictures import sample_grid_png

        if "samples" not in outputs:
            return
        df = self.cfg.diffusion
        agreement = ""
        if "sample_predictions" in outputs:
            agreement = (
                f", classifier agrees on {np.mean(outputs['sample_predictions'] == outputs['sample_labels']):.0%}"
            )
        sample_grid_png(
            os.path.join(workdir, "samples.png"),
            outputs["samples"],
            columns=df.samples_per_class,
            title=f"{self.cfg.model.name}, step {step}: {df.sampler} {df.sample_respacing}, guidance {df.cfg_scale}"
            f"{agreement}",
        )


TASK = DiffusionTask
