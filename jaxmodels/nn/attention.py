"""Multi-head self-attention with a fused qkv projection (timm's `Attention` layout).

The qkv kernel is (embed, 3, heads, head_dim) and the output kernel (heads, head_dim,
embed), so tensor parallelism splits heads; converters reshape the (3D, D) and (D, D)
PyTorch weights into them.
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.nn.layers import constrain


def xavier_uniform_flat(in_dims: int):
    """Xavier-uniform over the kernel seen as (prod(in dims), prod(out dims)), as for the torch Linear."""

    def init(key, shape, dtype=jnp.float32):
        fan_in, fan_out = math.prod(shape[:in_dims]), math.prod(shape[in_dims:])
        return nn.initializers.xavier_uniform()(key, (fan_in, fan_out), dtype).reshape(shape)

    return init


class Projection(nn.Module):
    """y = einsum(equation, x, kernel) + bias, with the kernel kept in its multi-axis shape."""

    equation: str
    kernel_shape: Sequence[int]
    kernel_axes: Sequence[str | None]
    in_dims: int  # leading kernel dims that contract with x
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(xavier_uniform_flat(self.in_dims), self.kernel_axes),
            tuple(self.kernel_shape),
            jnp.float32,
        )
        y = jnp.einsum(self.equation, x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            out_shape, out_axes = self.kernel_shape[self.in_dims :], self.kernel_axes[self.in_dims :]
            bias = self.param(
                "bias", nn.with_logical_partitioning(nn.initializers.zeros, out_axes), tuple(out_shape), jnp.float32
            )
            y = y + bias.astype(self.dtype)
        return y


class Attention(nn.Module):
    num_heads: int
    qkv_bias: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):  # (batch, length, embed)
        dim = x.shape[-1]
        if dim % self.num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads={self.num_heads}")
        h, hd = self.num_heads, dim // self.num_heads
        qkv = Projection(
            "bld,dkhe->blkhe",
            (dim, 3, h, hd),
            ("embed", None, "heads", "kv"),
            1,
            self.qkv_bias,
            self.dtype,
            name="qkv",
        )(x)
        q, k, v = (constrain(qkv[:, :, i], ("batch", "length", "heads", "kv")) for i in range(3))
        out = jax.nn.dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        return Projection("blhe,hed->bld", (h, hd, dim), ("heads", "kv", "embed"), 2, True, self.dtype, name="proj")(
            out
        )
