"""Named variants of a model class, and parameter counts, the same way for every family."""

import dataclasses

import flax.linen as nn
import jax


def create(cls, variants: dict, name: str, **overrides):
    """``cls`` with the arguments of ``variants[name]``, overridden; an unknown variant or
    argument is an error listing the valid ones."""
    if name not in variants:
        raise ValueError(f"unknown {cls.__name__} variant {name!r}; valid: {', '.join(variants)}")
    valid = set(cls.__dataclass_fields__) - {"parent", "name"}
    unknown = set(overrides) - valid
    if unknown:
        raise ValueError(f"unknown {cls.__name__} argument(s) {sorted(unknown)}; valid: {sorted(valid)}")
    return cls(**{**variants[name], **overrides})


def named_config(configs: dict, name: str, kind: str, **overrides):
    """The frozen dataclass ``configs[name]`` with fields overridden; an unknown name or field is
    an error naming the ``kind`` of model and listing the valid ones."""
    if name not in configs:
        raise ValueError(f"unknown {kind} model {name!r}; valid: {', '.join(configs)}")
    fields = {f.name for f in dataclasses.fields(configs[name])}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown {kind} argument(s) {unknown}; valid: {sorted(fields)}")
    return dataclasses.replace(configs[name], **overrides)


def param_count(model: nn.Module, *args, **kwargs) -> int:
    """Parameters of ``model`` initialised on these example inputs (shapes only, nothing computed):
    upstream's sum(p.numel() for p in model.parameters())."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, **kwargs))
    return sum(leaf.size for leaf in jax.tree.leaves(nn.meta.unbox(shapes["params"])))
