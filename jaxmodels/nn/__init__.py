"""Blocks shared by the model families, every parameter annotated with logical axis names."""

from jaxmodels.nn.layers import (
    Conv,
    Dense,
    DepthwiseConv,
    DropPath,
    LayerNorm,
    constrain,
    depthwise_conv,
    gelu,
    gelu_tanh,
    repeated,
)
from jaxmodels.nn.state_dict import (
    assign_state_dict,
    load_state_dict,
)

__all__ = [
    "Conv",
    "Dense",
    "DepthwiseConv",
    "DropPath",
    "LayerNorm",
    "assign_state_dict",
    "constrain",
    "depthwise_conv",
    "gelu",
    "gelu_tanh",
    "load_state_dict",
    "repeated",
]
