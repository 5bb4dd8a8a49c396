"""Evaluators: how a metric is computed, apart from the tasks that report it.

Two kinds of module live here. Metric modules (accuracy, text, fidelity) hold the functions
a task's eval step uses, so that every family computes top-1/top-5, WER/CER or a codec's
SI-SNR, mel distance and bitrate alike.
Plug-ins are listed in a config's ``evals:`` and run at an evaluation on what the task
generated (samples, speech), each at its own interval:

    evals:
      - name: classifier_agreement   # the module trainers/evaluators/classifier_agreement.py
        run: runs/digits              # its own keys (its CONFIG dataclass)
        every: 1000                   # steps; 0 (default): at every evaluation

A plug-in module defines CONFIG, a dataclass extending config.EvalConfig, and EVALUATOR,
a class constructed with (its config, the task) and called with the evaluation's outputs
and the params evaluated, returning (metrics, outputs to add). A model it needs (a classifier, a recogniser) is a
trained run or a weights file its config names, loaded when it is built: nothing is
trained here. Plug-ins outside this package are named by module path.
"""

import importlib
import pkgutil

from trainers.config import ConfigError, EvalConfig

METRIC_MODULES = ("accuracy", "fidelity", "text")


def plugins() -> list:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in METRIC_MODULES)


def plugin(name: str):
    """The module of a plug-in: trainers.evaluators.<name>, or the module at that import path."""
    if "." not in name and name not in plugins():
        raise ConfigError(f"unknown evaluator {name!r}; valid: {', '.join(plugins())}, or an importable module path")
    module = importlib.import_module(name if "." in name else f"{__name__}.{name}")
    for attr in ("CONFIG", "EVALUATOR"):
        if not hasattr(module, attr):
            raise ConfigError(f"evaluator {name!r}: module {module.__name__} defines no {attr}")
    if not issubclass(module.CONFIG, EvalConfig):
        raise ConfigError(f"evaluator {name!r}: its CONFIG must extend config.EvalConfig")
    return module


def build(cfg, task) -> list:
    """(config, evaluator) of each plug-in the config lists, built now (helpers loaded)."""
    return [(c, plugin(c.name).EVALUATOR(c, task)) for c in cfg.evals]


def due(c: EvalConfig, step: int, final: bool) -> bool:
    return final or c.every == 0 or step % c.every == 0
