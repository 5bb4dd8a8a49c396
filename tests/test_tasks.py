"""The task contract: a family outside trainers/ trains through the shared trainer, and a task
that breaks the contract is named with what it lacks."""

import re
import sys
import types

import numpy as np
import pytest

from trainers import config as config_lib
from trainers.loop import train
from trainers.tasks import get_task, missing_members

TINY = {
    "task": "helpers.tiny_family",
    "data": {"batch_size": 8, "eval_batch_size": 8, "points": 32},
    "tiny": {"noise": 0.0},
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "schedule": "constant"},
    "train": {"steps": 30, "log_every": 10, "eval_every": 30, "checkpoint_every": 30, "async_checkpointing": False},
}


def test_a_family_outside_trainers_trains_with_its_own_section(tmp_path):
    cfg = config_lib.parse(TINY)
    assert type(cfg).__name__ == "HelpersTinyFamilyTaskConfig" and cfg.tiny.noise == 0.0 and cfg.data.points == 32
    assert config_lib.parse(config_lib.to_dict(cfg)) == cfg
    metrics = train(cfg, str(tmp_path))
    assert metrics["eval/mse"] < 1e-2 * float(np.sum(np.square([1.0, -2.0, 0.5, 3.0])))
    assert (tmp_path / "tiny.json").is_file()

    with pytest.raises(config_lib.ConfigError, match=r"unknown config key tiny\.nois; valid keys of tiny: noise"):
        config_lib.parse({**TINY, "tiny": {"nois": 1.0}})
    with pytest.raises(config_lib.ConfigError, match=r"unknown config key data\.image_size; valid keys of data: "):
        config_lib.parse({**TINY, "data": {"image_size": 8}})


def test_unknown_tasks_and_sections_are_named():
    with pytest.raises(
        config_lib.ConfigError,
        match="unknown task 'ctcc'; valid: audiolm, classification, codec, cosyvoice_flow, cosyvoice_llm, ctc",
    ):
        config_lib.parse({"task": "ctcc"})
    with pytest.raises(config_lib.ConfigError, match="task: every config names its task"):
        config_lib.parse({})
    with pytest.raises(config_lib.ConfigError, match="unknown config key speech; valid keys of the config: "):
        config_lib.parse({"task": "classification", "speech": {}})


def test_get_task_names_what_a_task_lacks(monkeypatch):
    from helpers import tiny_family

    from trainers.tasks import SplitSources

    kept = {
        k: v for k, v in vars(tiny_family.TinyTask).items() if k not in ("eval_metrics", "__dict__", "__weakref__")
    }
    NoMetrics = type("NoMetrics", (SplitSources,), kept)

    class NoLoss:
        def __init__(self, cfg):
            self.cfg = cfg

    for cls, lacks in ((NoMetrics, "eval_metrics"), (NoLoss, "loss (or optimizer_groups and train_update)")):
        module = types.ModuleType("helpers.broken_family")
        module.TASK, module.SECTIONS = cls, tiny_family.SECTIONS
        monkeypatch.setitem(sys.modules, "helpers.broken_family", module)
        monkeypatch.setattr(config_lib, "_CONFIG_CLASSES", {})
        cfg = config_lib.parse({**TINY, "task": "helpers.broken_family"})
        message = rf"task 'helpers.broken_family': {cls.__name__} lacks .*{re.escape(lacks)}"
        with pytest.raises(config_lib.ConfigError, match=message):
            get_task(cfg)
    assert missing_members(tiny_family.TinyTask) == []
