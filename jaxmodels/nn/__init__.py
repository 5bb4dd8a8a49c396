"""Blocks shared by the model families, every parameter annotated with logical axis names."""
from jaxmodels.nn.layers import Conv, Dense, DropPath, LayerNorm, constrain
from jaxmodels.nn.state_dict import (
    assign_state_dict,
    load_state_dict,
)

__all__ = [
    "Conv",
    "Dense",
    "DropPath",
    "LayerNorm",
    "assign_state_dict",
    "constrain",
    "load_state_dict",
]
