"""A family outside trainers/: linear regression on random points, with a section of its own.

It shows what a new family needs: a module that defines TASK and SECTIONS, named in a
config by its import path (``task: helpers.tiny_family``), and no edit to shared code.
"""

import json
import os
from dataclasses import dataclass

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from trainers.config import DataConfig
from trainers.tasks import SplitSources

FEATURES = 4
TRUE_WEIGHTS = np.array([1.0, -2.0, 0.5, 3.0], np.float32)


@dataclass
class TinyDataConfig(DataConfig):
    source: str = "random"
    points: int = 64  # per split


@dataclass
class TinyConfig:
    noise: float = 0.0  # of the targets


SECTIONS = {"data": TinyDataConfig, "tiny": TinyConfig}


class Linear(nn.Module):
    @nn.compact
    def __call__(self, x):
        init = nn.with_logical_partitioning(nn.initializers.zeros, ("features", "mlp"))
        return (x @ self.param("kernel", init, (FEATURES, 1)))[:, 0]


class TinyTask(SplitSources):
    def __init__(self, cfg):
        self.cfg = cfg
        self.model = Linear()
        self.train_transform = self.eval_transform = lambda record, rng: {**record, "mask": np.float32(1.0)}

    def make_source(self, split):
        rng = np.random.default_rng(len(split))
        x = rng.normal(size=(self.cfg.data.points, FEATURES)).astype(np.float32)
        y = x @ TRUE_WEIGHTS + self.cfg.tiny.noise * rng.normal(size=len(x)).astype(np.float32)
        return [{"x": a, "y": b} for a, b in zip(x, y)]

    def example_batch(self, n):
        return {"x": np.zeros((n, FEATURES), np.float32), "y": np.zeros(n, np.float32), "mask": np.ones(n, np.float32)}

    def init(self, rng, batch):
        return self.model.init(rng, batch["x"])

    def loss(self, params, batch, rng, step):
        error = (self.model.apply({"params": params}, batch["x"]) - batch["y"]) ** 2
        return jnp.sum(error * batch["mask"]) / jnp.maximum(batch["mask"].sum(), 1.0), {}

    def eval_outputs(self, params, batch):
        return {"squared_error": (self.model.apply({"params": params}, batch["x"]) - batch["y"]) ** 2}

    def eval_metrics(self, outputs):
        return {"mse": float(np.mean(outputs["squared_error"]))}

    def write_artifacts(self, workdir, outputs, step):
        with open(os.path.join(workdir, "tiny.json"), "w") as f:
            json.dump({"step": step, "mse": self.eval_metrics(outputs)["mse"]}, f)


TASK = TinyTask
