"""Typed experiment configs: YAML in, validated dataclasses out.

An unknown key or a value of the wrong type is an error that names the dotted key and
lists the valid ones. Command-line overrides are ``dotted.key=value`` with the value
parsed as YAML (``optimizer.lr=1e-3``, ``mesh.fsdp=-1``, ``model.args.dims=[8,16]``).
"""

import argparse
import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    pass


@dataclass
class ModelConfig:
    name: str = "mambaout_femto"  # a named variant of the task's family
    args: dict[str, Any] = field(default_factory=dict)  # constructor overrides, upstream names
    # Upstream weights to start from (.pt/.pth/.th/.bin torch pickles, .safetensors), converted
    # by the family: trainers.train fine-tunes them (a run that resumes ignores them), the
    # inference commands use them instead of a run's checkpoint.
    init_from: str = ""


@dataclass
class DataConfig:
    """Where the data is and how it is batched; a family's data section adds its own keys."""

    source: str = ""  # the family's kinds of data (its data section lists them)
    path: str = ""
    train_split: str = "train"
    eval_split: str = "val"
    batch_size: int = 64  # global, over all devices and processes
    eval_batch_size: int = 128
    num_workers: int = 0  # grain worker processes (0: read in the trainer process)

    def __post_init__(self):
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be at least 1, not {getattr(self, name)}")


@dataclass
class OptimizerConfig:
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.9  # sgd
    nesterov: bool = False
    schedule: Literal["cosine", "linear", "constant", "inverse_sqrt"] = "cosine"
    warmup_steps: int = 0
    warmup_init_lr: float = 0.0
    min_lr: float = 0.0
    clip_grad_norm: float = 0.0  # 0: no clipping
    ema_decay: float = 0.0  # 0: no EMA of params
    grad_accum_steps: int = 1


@dataclass
class MeshConfig:
    data: int = -1  # -1: whatever the other axes leave of the devices
    fsdp: int = 1
    tensor: int = 1


@dataclass
class TrainConfig:
    steps: int = 1000
    log_every: int = 50
    eval_every: int = 500  # also evaluated at the end
    checkpoint_every: int = 500  # also saved at the end
    keep_checkpoints: int = 3
    best_metric: str = ""  # e.g. "accuracy": also keep the best checkpoint by eval/<best_metric>
    best_mode: Literal["max", "min"] = "max"
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    remat: bool = False
    async_checkpointing: bool = True
    # A step with a non-finite loss or gradient norm is never applied; "error" stops the run
    # there (its checkpoints intact), "skip" goes on with the next batch.
    on_nonfinite: Literal["error", "skip"] = "error"

    def __post_init__(self):
        for name in ("steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"train.{name} must be at least 1, not {getattr(self, name)} "
                    "(logs, evaluations and checkpoints also come at the last step)"
                )


@dataclass
class EvalConfig:
    """One entry of a config's ``evals:``: an evaluator plug-in (trainers/evaluators) and its interval."""

    name: str = ""  # a plug-in of trainers/evaluators, or a module path
    every: int = 0  # steps between its runs; 0: at every evaluation (train.eval_every and the last step)

    def __post_init__(self):
        if self.every < 0:
            raise ConfigError(f"evals: {self.name}: every must be at least 0, not {self.every}")


@dataclass
class Config:
    """The sections every family has. A family's config class (config_class) adds its own
    sections, and may replace ``data`` with a subclass of DataConfig holding its keys."""

    task: str = ""  # a family under trainers/tasks (ctc, tts, ...) or an importable module path
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evals: list[EvalConfig] = field(default_factory=list)


_CONFIG_CLASSES = {}


def config_class(task: str) -> type:
    """The config dataclass of a task: Config with the sections its family module declares
    in SECTIONS (name -> dataclass), made once per task so that configs compare equal."""
    if task not in _CONFIG_CLASSES:
        from trainers.tasks import family

        sections = getattr(family(task), "SECTIONS", {})
        for name, cls in sections.items():
            if name == "data" and not issubclass(cls, DataConfig):
                raise ConfigError(f"task {task}: its data section {cls.__name__} must extend DataConfig")
        fields = [(name, cls, field(default_factory=cls)) for name, cls in sections.items()]
        title = "".join(part.title() for part in task.replace(".", "_").split("_"))
        _CONFIG_CLASSES[task] = dataclasses.make_dataclass(f"{title}TaskConfig", fields, bases=(Config,))
    return _CONFIG_CLASSES[task]


def parse(data: dict) -> Config:
    """A config from its YAML mapping: its task's config class, every key checked."""
    task = data.get("task")
    if not isinstance(task, str) or not task:
        from trainers.tasks import families

        raise ConfigError(f"task: every config names its task: one of {', '.join(families())} or a module path")
    return from_dict(config_class(task), data)


def _check(value, tp, key):
    """Returns ``value`` converted to ``tp`` or raises ConfigError naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is EvalConfig:  # each entry has the keys of the plug-in it names
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            raise ConfigError(f"{key}: expected a mapping with the evaluator's name, got {value!r}")
        from trainers.evaluators import plugin

        return from_dict(plugin(value["name"]).CONFIG, value, key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, key)
    if tp is Any:
        return value
    if origin is typing.Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        return _check(value, next(a for a in args if a is not type(None)), key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (tuple, list, tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        item = args[0] if args else Any
        return origin(_check(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (dict, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]}; valid keys of {prefix or 'the config'}: {', '.join(names)}"
        )
    kwargs = {k: _check(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def apply_override(data: dict, override: str) -> None:
    """Sets ``a.b.c=value`` in a nested dict (the value parsed as YAML; ``a.b.c=`` is the
    empty string, e.g. to switch off an optional path)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form dotted.key=value")
    key, raw = override.split("=", 1)
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {override!r}: the value is not valid YAML: {_yaml_problem(e)}") from None


def _yaml_problem(e) -> str:
    """PyYAML's error in one line: what, and where (line and column, counted from 1)."""
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{getattr(e, 'problem', None) or e}{where}"


def load(path: str, overrides=()) -> Config:
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    for o in overrides:
        apply_override(data, o)
    try:
        return parse(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def to_dict(cfg) -> dict:
    def plain(x):
        if isinstance(x, tuple):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, list):
            return [plain(v) for v in x]
        return x

    return plain(dataclasses.asdict(cfg))


def dump(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def parse_command_line(prog: str, description: str, argv=None, add_arguments=lambda parser: None, weights=False):
    """(args, Config) from ``CONFIG.yaml --workdir DIR [dotted.key=value ...]`` plus a command's own flags.

    With ``weights``, the command also takes ``--weights PATH`` (upstream weights, set as
    model.init_from; then no run directory is needed) and ``--model NAME`` (model.name). A
    config error ends the process with its message (no traceback).
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("config", help="experiment YAML (configs/...)")
    parser.add_argument("--workdir", required=not weights, help="checkpoints, metrics and pictures; resumed from")
    if weights:
        parser.add_argument("--weights", help="upstream weights (.pt/.pth/.safetensors) instead of a run's checkpoint")
        parser.add_argument("--model", help="the weights' named variant (model.name), e.g. DiT-XL/2")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. optimizer.lr=1e-3")
    add_arguments(parser)
    args = parser.parse_intermixed_args(argv)
    if weights and not (args.workdir or args.weights):
        parser.error("give --workdir (a training run) or --weights (upstream weights)")
    try:
        cfg = load(args.config, args.overrides)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    if weights and args.weights:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_from=args.weights))
    if weights and args.model:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=args.model))
    return args, cfg
