"""The Frechet distance of generated images to real ones, in a network's feature space.

With `inception` (pytorch-fid's weights): ADM's numbers, as `trainers.fid` computes them:
fid, sfid, inception_score, precision and recall. With `run` (a classification run, for
images too small for Inception, as the digits): the Frechet distance of that classifier's
pooled features, `fid`. The real images are `reference` (an ADM reference batch .npz;
its mu/sigma when it has them) or, without one, the task's evaluation split, whose
statistics are computed once, when the evaluator is built.

Reads the outputs "samples" (N, H, W, C) in [-1, 1] (grey samples are repeated to RGB).
"""

from dataclasses import dataclass

import jax
import numpy as np
from PIL import Image

from jaxmodels import inception
from trainers.config import ConfigError, EvalConfig


@dataclass
class FIDConfig(EvalConfig):
    inception: str = ""  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or .safetensors)
    run: str = ""  # or a classification run's directory: its classifier's features
    reference: str = ""  # an ADM reference batch (.npz); empty: the task's evaluation split


def _rgb_uint8(images):
    images = np.clip(127.5 * np.asarray(images) + 128.0, 0, 255).astype(np.uint8)  # as DiT's sample_ddp.py
    return images.repeat(3, axis=-1) if images.shape[-1] == 1 else images


class FID:
    def __init__(self, cfg: FIDConfig, task):
        if bool(cfg.inception) == bool(cfg.run):
            raise ConfigError("evals: fid needs inception (weights) or run (a classification run), one of them")
        if task.cfg.data.source == "latents":
            raise ConfigError(
                "evals: fid scores images, and a latent model's samples are latents: write an evaluation batch "
                "(python -m trainers.sample ... --num_samples N --out samples.npz) and score it with trainers.fid"
            )
        if cfg.inception:
            from trainers.fid import Features

            features = Features(cfg.inception, batch_size=100)
            self.features = lambda images: features(images, "evaluation images")
        else:
            from trainers.runs import load_run

            trainer, params = load_run(cfg.run, "classification", "classifier of evals: fid")
            size = trainer.cfg.data.image_size
            embed = jax.jit(lambda p, x: trainer.task.features(p, x))

            def classifier_features(images):  # resized as the classifier's training images (bilinear)
                images = np.stack(
                    [np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images]
                )
                return {"pool": np.asarray(embed(params, images))}

            self.features = classifier_features
        self.adm = bool(cfg.inception)
        if cfg.reference:
            from trainers.fid import read_images, reference_statistics

            self.reference = self.features(read_images(cfg.reference))
            self.stats = reference_statistics(cfg.reference, self.reference) if self.adm else None
        else:
            source = task.eval_source()
            real = np.stack([task.eval_transform(source[i], None)["x"] for i in range(len(source))])
            self.reference = self.features(_rgb_uint8(real))
            self.stats = None
        if self.stats is None:
            keys = ("pool", "spatial") if self.adm else ("pool",)
            self.stats = tuple(inception.statistics(self.reference[k]) for k in keys)

    def __call__(self, outputs, params):
        ours = self.features(_rgb_uint8(outputs["samples"]))
        metrics = {"fid": inception.frechet_distance(*inception.statistics(ours["pool"]), *self.stats[0])}
        if self.adm:
            precision, recall = inception.precision_recall(self.reference["pool"], ours["pool"])
            metrics.update(
                sfid=inception.frechet_distance(*inception.statistics(ours["spatial"]), *self.stats[1]),
                inception_score=inception.inception_score(ours["logits"]),
                precision=precision,
                recall=recall,
            )
        return metrics, {}


CONFIG, EVALUATOR = FIDConfig, FID
