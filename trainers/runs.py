"""Trained runs used as helpers (a classifier, a codec, a recogniser): loaded, never trained here.

A run directory holds the config it was trained with (config.yaml) and its checkpoints,
so naming the directory is enough. One that holds no trained run is an error naming the
command that makes it.
"""

import dataclasses
import os

import jax

from trainers import config as config_lib
from trainers import sharding
from trainers.checkpoint import restore_run
from trainers.loop import Trainer


def load_run(workdir: str, task: str, purpose: str, **replace):
    """(Trainer, params) of the ``task`` run in ``workdir``: its inference params (EMA when
    it has them), whole on every process and placed on the first local device, where the
    helper runs. ``replace`` swaps config sections (section name -> function of the config)."""
    path = os.path.join(workdir, "config.yaml")
    checkpoints = os.path.join(workdir, "checkpoints")
    if not os.path.isfile(path) or not os.path.isdir(checkpoints):
        raise config_lib.ConfigError(
            f"the {purpose} at {workdir} is not a trained run (it needs config.yaml and checkpoints/); "
            f"train it first: python -m trainers.train CONFIG.yaml --workdir {workdir}"
        )
    cfg = config_lib.load(path)
    if cfg.task != task:
        raise config_lib.ConfigError(f"the {purpose} at {workdir} is a {cfg.task!r} run, not {task!r}")
    cfg = dataclasses.replace(cfg, **{k: v(cfg) for k, v in replace.items()})
    trainer = Trainer(cfg)
    _, state = restore_run(trainer, workdir)
    return trainer, jax.device_put(sharding.host_copy(state.inference_params), jax.local_devices()[0])
