"""Multi-head self-attention with a fused qkv projection (timm's `Attention` layout).

The qkv kernel is (embed, 3, heads, head_dim) and the output kernel (heads, head_dim,
embed), so tensor parallelism splits heads; converters reshape the (3D, D) and (D, D)
PyTorch weights into them.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.nn.layers import constrain


class Attention(nn.Module):
    num_heads: int
    qkv_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    # DenseGeneral initialises its kernel flattened to (in, out): xavier over (D, 3D) and
    # (D, D), as upstream's xavier_uniform on the Linear weights.
    kernel_init: nn.initializers.Initializer = nn.initializers.xavier_uniform()

    @nn.compact
    def __call__(self, x):  # (batch, length, embed)
        dim = x.shape[-1]
        if dim % self.num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads={self.num_heads}")
        head_dim = dim // self.num_heads
        qkv = nn.DenseGeneral(
            (3, self.num_heads, head_dim),
            use_bias=self.qkv_bias,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.with_logical_partitioning(self.kernel_init, ("embed", None, "heads", "kv")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None, "heads", "kv")),
            name="qkv",
        )(x)
        q, k, v = (constrain(qkv[:, :, i], ("batch", "length", "heads", "kv")) for i in range(3))
        out = jax.nn.dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        return nn.DenseGeneral(
            dim,
            axis=(-2, -1),
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.with_logical_partitioning(self.kernel_init, ("heads", "kv", "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name="proj",
        )(out)
