"""The task contract: what a model family gives the trainer, and how a config finds it.

A family is a module: each module of this package (``task: ctc`` is trainers.tasks.ctc),
or any importable module named by its path (``task: mypackage.mytask``). It defines

  TASK       the task class: constructed with the config, it must satisfy Task and one
             of GradientTask or PartsInTurn (get_task checks, and names what is missing)
  SECTIONS   optional: the config sections it adds, name -> dataclass; "data" may be a
             subclass of config.DataConfig holding the family's data keys

so adding a family edits no shared module. Optional capabilities are protocols of their
own (HasState, StatefulLoss, HasAssets, Generates, LoadsWeights, BatchesByLength), which the
loop tests with isinstance.
"""

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from trainers.config import ConfigError

Batch = Mapping[str, Any]  # name -> array with a leading batch axis; "mask" 0 marks padding rows
Transform = Callable[[dict, np.random.Generator], dict]  # a record -> an example, on the host


@runtime_checkable
class Task(Protocol):
    """What every task has."""

    cfg: Any
    train_transform: Transform
    eval_transform: Transform

    def train_source(self) -> Any:
        """A random-access source (len, getitem) of the training split's records."""

    def eval_source(self) -> Any:
        """The same for the evaluation split."""

    def example_batch(self, n: int) -> dict:
        """n rows of zeros shaped as a batch: shapes for init and for the batch shardings."""

    def init(self, rng, batch: Batch) -> dict:
        """Variables {"params": ..., "state": ... (HasState only)}, boxed with their logical
        axes (nn.with_logical_partitioning)."""

    def eval_outputs(self, params, batch: Batch) -> dict:
        """Per-example arrays of one evaluation batch (jitted, sharded like the batch); params
        hold the model state's parts too (HasState)."""

    def eval_metrics(self, outputs: dict) -> dict:
        """Host side: outputs over the whole split (numpy, padding dropped) -> scalar metrics."""

    def write_artifacts(self, workdir: str, outputs: dict, step: int) -> None:
        """Pictures, audio or files for a person to look at (process 0 only)."""


@runtime_checkable
class GradientTask(Task, Protocol):
    """A task trained by one optimizer on the gradient of its loss."""

    def loss(self, params, batch: Batch, rng, step) -> tuple:
        """(scalar loss, {name: scalar metric}); rows with mask 0 must contribute nothing.
        step: the optimizer step (an int32 scalar), for schedules inside the loss."""


@runtime_checkable
class PartsInTurn(Task, Protocol):
    """A task whose parts are updated in turn, each with its own optimizer state (a GAN)."""

    optimizer_groups: tuple  # names of the top-level params subtrees that have an optimizer state

    def train_update(self, tx, params, opt_state: dict, model_state: dict, batch: Batch, rng, step) -> tuple:
        """(params, opt_state, model_state, {name: scalar metric}) after one step of every part
        (model_state: HasState's, {} without)."""


@runtime_checkable
class HasState(Protocol):
    """Non-trainable state: the "state" collection of init's variables (codebooks moved by
    their own rule, a loss balancer's statistics), updated by train_update (PartsInTurn),
    never by the optimizer; saved and restored with the params, and merged into them for
    evaluation and inference. The EMA averages only its top-level parts named in ema_state."""

    ema_state: tuple


@runtime_checkable
class StatefulLoss(Protocol):
    """A GradientTask with HasState whose state moves in its forward pass (EMA codebooks, as
    batch-norm statistics): the loop calls loss_and_state instead of loss."""

    def loss_and_state(self, params, model_state: dict, batch: Batch, rng, step) -> tuple:
        """(scalar loss, ({name: scalar metric}, new model_state)); the gradient is taken with
        respect to params alone. With micro-batches the state passes from one to the next."""


@runtime_checkable
class HasAssets(Protocol):
    """Arrays fixed before training that the params depend on (a tokenizer's centroids),
    saved in every checkpoint and given back on restore, before any source is made."""

    def assets(self) -> dict | None: ...

    def set_assets(self, assets: dict) -> None: ...


@runtime_checkable
class Generates(Protocol):
    """A generative task: samples drawn at each evaluation."""

    def generate(self, params, mesh) -> tuple:
        """(metrics, outputs) of samples drawn with params, sharded over mesh."""


@runtime_checkable
class LoadsWeights(Protocol):
    """A family that starts from upstream checkpoints (model.init_from)."""

    def convert_weights(self, state_dict: dict) -> dict:
        """An upstream state_dict (upstream key names -> numpy arrays) -> variables {"params":
        ..., "state": ...} of numpy arrays laid out as init's. They may hold only some parts
        (a released codec has no discriminator): the others keep their initialisation.
        Raises ValueError naming every key or shape that does not fit the model."""


@runtime_checkable
class BatchesByLength(Protocol):
    """A task whose training batches may be formed by length (speech by duration)."""

    def length_buckets(self) -> Any:
        """A data.LengthBuckets over train_source(), or None for batches of data.batch_size."""


class SplitSources:
    """A task's train_source() and eval_source(): each split built once, by the task's make_source(split)."""

    def _source(self, split):
        sources = self.__dict__.setdefault("_sources", {})
        if split not in sources:
            sources[split] = self.make_source(split)
        return sources[split]

    def train_source(self):
        return self._source(self.cfg.data.train_split)

    def eval_source(self):
        return self._source(self.cfg.data.eval_split)


def families() -> list:
    """The families built in: the modules of this package (a leading _ marks a shared part)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def family(task: str):
    """The module of a task name: trainers.tasks.<task>, or the module at that import path."""
    name = task if "." in task else f"{__name__}.{task}"
    if "." not in task and task not in families():
        raise ConfigError(f"unknown task {task!r}; valid: {', '.join(families())}, or an importable module path")
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and name.startswith(e.name):
            raise ConfigError(f"task {task!r}: no module {name} (valid: {', '.join(families())})") from None
        raise
    if not hasattr(module, "TASK"):
        raise ConfigError(f"task {task!r}: module {name} defines no TASK (the task class)")
    return module


def _members(protocol) -> list:
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {k for k, v in vars(protocol).items() if callable(v) and not k.startswith("_")}
    return sorted(names)


def missing_members(task) -> list:
    """What a task (or, methods only, a task class) lacks of the contract: Task's members,
    a loss or a train_update, and each capability whole."""
    is_class = isinstance(task, type)
    wanted = lambda protocol: [n for n in _members(protocol) if not is_class or callable(getattr(protocol, n, None))]
    missing = [name for name in wanted(Task) if not hasattr(task, name)]
    if not any(all(hasattr(task, n) for n in wanted(p)) for p in (GradientTask, PartsInTurn)):
        missing.append("loss (or optimizer_groups and train_update)")
    for capability in (HasAssets,):
        present = [name for name in _members(capability) if hasattr(task, name)]
        if present and len(present) < len(_members(capability)):
            missing += [f"{name} (with {', '.join(present)})" for name in _members(capability) if name not in present]
    return missing


def get_task(cfg):
    """The task of a config, checked against the contract."""
    cls = family(cfg.task).TASK
    _check(cfg.task, cls)  # before constructing it, which may take long
    task = cls(cfg)
    _check(cfg.task, task)
    return task


def _check(name: str, task):
    missing = missing_members(task)
    if missing:
        cls = task if isinstance(task, type) else type(task)
        raise ConfigError(f"task {name!r}: {cls.__name__} lacks {', '.join(missing)}")
