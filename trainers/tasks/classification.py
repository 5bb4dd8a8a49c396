"""Image classification (MambaOut): softmax cross-entropy with label smoothing, mixup/cutmix."""

import importlib
import os
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from trainers.data.images import DigitsSource, ImageDataConfig, ImageFolderSource, ImageTransform
from trainers.evaluators import accuracy
from trainers.tasks import SplitSources


@dataclass
class ClassificationDataConfig(ImageDataConfig):
    source: Literal["digits", "imagefolder"] = "digits"
    eval_crop_pct: float = 1.0  # eval: shorter side to image_size/crop_pct, centre crop (MambaOut's cfg: 1.0)
    random_resized_crop: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mixup_switch_prob: float = 0.5  # with both on: chance of cutmix over mixup per batch (timm's)


SECTIONS = {"data": ClassificationDataConfig}


# Image-classifier families by model-name prefix: the module with create(name, **overrides)
# and from_torch(state_dict, model).
MODELS = {"mambaout": "jaxmodels.mambaout"}


class ClassificationTask(SplitSources):
    def __init__(self, cfg):
        self.cfg = cfg
        d = cfg.data
        if len(d.mean) != 3 or len(d.std) != 3:
            raise ValueError(f"data.mean and data.std need 3 values (RGB), got {d.mean} and {d.std}")
        num_classes = cfg.model.args.get("num_classes") or self.train_source().num_classes
        family = cfg.model.name.split("_")[0]
        if family not in MODELS:
            raise ValueError(f"model {cfg.model.name!r}: no image classifier family {family!r}; valid: {list(MODELS)}")
        self.family = importlib.import_module(MODELS[family])
        self.model = self.family.create(
            cfg.model.name,
            **{**cfg.model.args, "num_classes": num_classes},
            dtype=jnp.dtype(cfg.train.compute_dtype),
            remat=cfg.train.remat,
        )
        self.num_classes = num_classes
        common = dict(image_size=d.image_size, on_bad_image=d.on_bad_image)
        self.train_transform = ImageTransform(
            train=True,
            random_resized_crop=d.random_resized_crop,
            crop_scale=d.crop_scale,
            crop_ratio=d.crop_ratio,
            hflip=d.hflip,
            **common,
        )
        self.eval_transform = ImageTransform(train=False, crop_pct=d.eval_crop_pct, **common)

    def make_source(self, split):
        d = self.cfg.data
        if d.source == "digits":
            return DigitsSource(split, d.image_size, d.holdout_fraction)
        if not d.path:
            raise ValueError("data.path must name the image folder root for data.source=imagefolder")
        return ImageFolderSource(os.path.join(d.path, split))

    def example_batch(self, n):
        s = self.cfg.data.image_size
        return {
            "image": np.zeros((n, s, s, 3), np.uint8),
            "label": np.zeros((n,), np.int32),
            "mask": np.ones((n,), np.float32),
        }

    def normalise(self, image):
        mean = jnp.asarray(self.cfg.data.mean, jnp.float32) * 255.0
        std = jnp.asarray(self.cfg.data.std, jnp.float32) * 255.0
        return (image.astype(jnp.float32) - mean) / std

    def init(self, rng, batch):
        return self.model.init({"params": rng}, self.normalise(batch["image"]))

    def convert_weights(self, state_dict):
        return self.family.from_torch(state_dict, self.model)

    def _mix(self, rng, x, y):
        """timm's batch-mode mixup/cutmix: one lambda per batch, partner = the batch reversed."""
        d = self.cfg.data
        if d.mixup_alpha <= 0 and d.cutmix_alpha <= 0:
            return x, y
        k_switch, k_mix, k_cut, k_y, k_x = jax.random.split(rng, 5)
        lam_mix = jax.random.beta(k_mix, d.mixup_alpha, d.mixup_alpha) if d.mixup_alpha > 0 else 1.0
        if d.cutmix_alpha > 0:
            lam = jax.random.beta(k_cut, d.cutmix_alpha, d.cutmix_alpha)
            h, w = x.shape[1:3]
            cut = jnp.sqrt(1.0 - lam)
            ch, cw = (h * cut).astype(jnp.int32), (w * cut).astype(jnp.int32)
            cy, cx = jax.random.randint(k_y, (), 0, h), jax.random.randint(k_x, (), 0, w)
            y0, y1 = jnp.clip(cy - ch // 2, 0, h), jnp.clip(cy + ch // 2, 0, h)
            x0, x1 = jnp.clip(cx - cw // 2, 0, w), jnp.clip(cx + cw // 2, 0, w)
            rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
            box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
            lam_cut = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually pasted
            use_cut = jax.random.uniform(k_switch) < (d.mixup_switch_prob if d.mixup_alpha > 0 else 1.0)
        else:
            box, lam_cut, use_cut = None, 1.0, False
        partner_x, partner_y = x[::-1], y[::-1]
        mixed = lam_mix * x + (1.0 - lam_mix) * partner_x
        if box is not None:
            cutmixed = jnp.where(box[None, :, :, None], partner_x, x)
            x = jnp.where(use_cut, cutmixed, mixed)
            lam = jnp.where(use_cut, lam_cut, lam_mix)
        else:
            x, lam = mixed, lam_mix
        return x, lam * y + (1.0 - lam) * partner_y

    def loss(self, params, batch, rng, step):
        k_mix, k_drop = jax.random.split(rng)
        x = self.normalise(batch["image"])
        s = self.cfg.data.label_smoothing
        y = (
            optax.smooth_labels(jax.nn.one_hot(batch["label"], self.num_classes), s)
            if s
            else jax.nn.one_hot(batch["label"], self.num_classes)
        )
        x, y = self._mix(k_mix, x, y)
        logits = self.model.apply({"params": params}, x, deterministic=False, rngs={"dropout": k_drop})
        per_example = optax.softmax_cross_entropy(logits, y)
        mask = batch["mask"]
        n = jnp.maximum(mask.sum(), 1.0)
        accuracy = ((logits.argmax(-1) == batch["label"]) * mask).sum() / n
        return (per_example * mask).sum() / n, {"train/accuracy": accuracy, "train/skipped": (1.0 - mask).sum()}

    def logits(self, params, images):
        """Class logits of uint8 images (B, H, W, 3) at data.image_size."""
        return self.model.apply({"params": params}, self.normalise(images))

    def features(self, params, images):
        """The pooled, normed features the classifier head reads, of uint8 images at data.image_size."""
        return self.model.apply({"params": params}, self.normalise(images), method="forward_features")

    def eval_outputs(self, params, batch):
        logits = self.logits(params, batch["image"])
        top = accuracy.top_k(logits)
        return {
            "loss": optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]),
            "prediction": top[:, 0],
            "top5": top,
            "label": batch["label"],
        }

    def eval_metrics(self, outputs):
        return {
            **accuracy.accuracies(outputs["top5"], outputs["label"]),
            "loss": float(np.mean(outputs["loss"].astype(np.float64))),
        }

    def write_artifacts(self, workdir, outputs, step):
        from trainers.pictures import confusion_matrix_png, prediction_grid_png

        source = self.eval_source()
        confusion_matrix_png(
            os.path.join(workdir, "confusion_matrix.png"),
            outputs["label"],
            outputs["prediction"],
            self.num_classes,
            title=f"{self.cfg.model.name}, step {step}: "
            f"accuracy {np.mean(outputs['prediction'] == outputs['label']):.2%}",
        )
        n = min(64, len(outputs["label"]))
        images = [self.eval_transform(source[i], np.random.default_rng(0))["image"] for i in range(n)]
        prediction_grid_png(
            os.path.join(workdir, "predictions.png"), images, outputs["label"][:n], outputs["prediction"][:n]
        )


TASK = ClassificationTask
