"""MambaOut (Yu & Wang, "MambaOut: Do We Really Need Mamba for Vision?", 2024).

Structure and numerics as the official yuweihao/MambaOut models/mambaout.py: a stem of
two stride-2 3x3 convolutions, stages of Gated CNN blocks separated by stride-2 3x3
downsampling convolutions, global average pooling, LayerNorm, and an MLP head.
Channels-last throughout (NHWC), as upstream's blocks already are.
Module names follow upstream's state_dict keys so the converter is a renaming.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxmodels.nn import Conv, Dense, DepthwiseConv, DropPath, LayerNorm, constrain, gelu
from jaxmodels.nn.layers import default_kernel_init, dense_product

Dtype = Any
ACTIVATION_AXES = ("batch", "height", "width", "act_embed")


class StemLayer(nn.Module):
    out_channels: int
    dtype: Dtype = jnp.float32

    def setup(self):
        half = self.out_channels // 2
        self.conv1 = Conv(half, 3, stride=2, padding=1, axes=(None, None, None, "embed"), dtype=self.dtype)
        self.norm1 = LayerNorm(dtype=self.dtype)
        self.conv2 = Conv(self.out_channels, 3, stride=2, padding=1, dtype=self.dtype)
        self.norm2 = LayerNorm(dtype=self.dtype)

    def __call__(self, x):
        x = gelu(self.norm1(self.conv1(x)))
        return self.norm2(self.conv2(x))


class DownsampleLayer(nn.Module):
    out_channels: int
    dtype: Dtype = jnp.float32

    def setup(self):
        self.conv = Conv(self.out_channels, 3, stride=2, padding=1, dtype=self.dtype)
        self.norm = LayerNorm(dtype=self.dtype)

    def __call__(self, x):
        return self.norm(self.conv(x))


class BlockedDense(nn.Module):
    """nn.Dense's parameters (kernel (in, out) named by ``axes``, bias (out,)) applied block by block.

    ``columns(x, sizes)`` is the layer's output cut into pieces of ``sizes`` channels, each its own
    product with a column block of the kernel; ``rows(pieces)`` is the layer applied to the
    concatenation of ``pieces``, as a sum of their products with the kernel's row blocks. Neither
    slices nor concatenates an activation.
    """

    in_features: int
    features: int
    axes: tuple = ("embed", "mlp")
    dtype: Dtype = jnp.float32

    def setup(self):
        kernel_init = nn.with_logical_partitioning(default_kernel_init, self.axes)
        self.kernel = self.param("kernel", kernel_init, (self.in_features, self.features), jnp.float32)
        bias_init = nn.with_logical_partitioning(nn.initializers.zeros, self.axes[-1:])
        self.bias = self.param("bias", bias_init, (self.features,), jnp.float32)

    def columns(self, x, sizes):
        x, kernel, bias = x.astype(self.dtype), self.kernel.astype(self.dtype), self.bias.astype(self.dtype)
        bounds = np.cumsum((0, *sizes))
        # The blocks' kernel gradients share one transposed copy of x (dense_product).
        return [dense_product(x, kernel[:, a:b]) + bias[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def rows(self, pieces):
        kernel = self.kernel.astype(self.dtype)
        bounds = np.cumsum([0] + [p.shape[-1] for p in pieces])
        products = [p.astype(self.dtype) @ kernel[a:b] for p, a, b in zip(pieces, bounds[:-1], bounds[1:])]
        return sum(products) + self.bias.astype(self.dtype)


class GatedCNNBlock(nn.Module):
    """x + fc2(gelu(g) * concat(i, dwconv(c))), with (g, i, c) = split(fc1(norm(x))).

    The gate g is taken in two parts, the one for i and the one for c, so the block runs as
    gelu(g_i) * i and gelu(g_c) * dwconv(c) through fc1's and fc2's kernel blocks (BlockedDense):
    the same sums as upstream's, without the concatenation and, in the backward pass, without
    assembling fc1's output gradient from its pieces, which XLA:CPU ran as slow per-channel
    selects (13-20% of a block's forward and backward at MambaOut-Tiny's shapes,
    benchmarks/mambaout_train_step.py).
    """

    dim: int
    expansion_ratio: float = 8 / 3
    kernel_size: int = 7
    conv_ratio: float = 1.0
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32

    def setup(self):
        self.hidden = int(self.expansion_ratio * self.dim)
        self.conv_channels = int(self.conv_ratio * self.dim)
        self.norm = LayerNorm(dtype=self.dtype)
        self.fc1 = BlockedDense(self.dim, self.hidden * 2, axes=("embed", "mlp"), dtype=self.dtype)
        self.conv = DepthwiseConv(self.kernel_size, dtype=self.dtype)
        self.fc2 = BlockedDense(self.hidden, self.dim, axes=("mlp", "embed"), dtype=self.dtype)
        self.drop = DropPath(self.drop_path)

    def __call__(self, x, deterministic: bool = True):
        shortcut = x
        identity = self.hidden - self.conv_channels
        sizes = (identity, self.conv_channels, identity, self.conv_channels)
        g_i, g_c, i, c = self.fc1.columns(self.norm(x), sizes)
        x = self.fc2.rows([gelu(g_i) * i, gelu(g_c) * self.conv(c)])
        return constrain(self.drop(x, deterministic) + shortcut, ACTIVATION_AXES)


class MlpHead(nn.Module):
    num_classes: int
    mlp_ratio: float = 4
    head_dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        hidden = int(self.mlp_ratio * x.shape[-1])
        x = gelu(Dense(hidden, axes=("embed", "mlp"), dtype=self.dtype, name="fc1")(x))
        x = LayerNorm(axis_name="mlp", dtype=self.dtype, name="norm")(x)
        x = nn.Dropout(self.head_dropout)(x, deterministic=deterministic)
        return Dense(self.num_classes, axes=("mlp", "classes"), dtype=self.dtype, name="fc2")(x)


class MambaOut(nn.Module):
    """MambaOut with upstream's constructor arguments (in_chans, num_classes, depths, dims,
    conv_ratio, kernel_size, drop_path_rate, head_dropout); input NHWC.

    ``dtype`` is the compute dtype (parameters stay float32); ``remat`` recomputes each
    block's activations in the backward pass to save memory.
    """

    in_chans: int = 3
    num_classes: int = 1000
    depths: Sequence[int] = (3, 3, 9, 3)
    dims: Sequence[int] = (96, 192, 384, 576)
    conv_ratio: float = 1.0
    kernel_size: int = 7
    drop_path_rate: float = 0.0
    head_dropout: float = 0.0
    dtype: Dtype = jnp.float32
    remat: bool = False

    def setup(self):
        if len(self.depths) != len(self.dims):
            raise ValueError(f"depths {tuple(self.depths)} and dims {tuple(self.dims)} differ in length")
        self.downsample_layers = [StemLayer(self.dims[0], dtype=self.dtype)] + [
            DownsampleLayer(d, dtype=self.dtype) for d in self.dims[1:]
        ]
        # Linearly increasing stochastic depth over all blocks, as upstream.
        rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths))
        block = nn.remat(GatedCNNBlock, static_argnums=(2,)) if self.remat else GatedCNNBlock
        stages, cur = [], 0
        for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
            stages.append(
                [
                    block(
                        dim,
                        kernel_size=self.kernel_size,
                        conv_ratio=self.conv_ratio,
                        drop_path=float(rates[cur + j]),
                        dtype=self.dtype,
                        name=f"stages_{i}_{j}",
                    )
                    for j in range(depth)
                ]
            )
            cur += depth
        self.stages = stages
        self.norm = LayerNorm(dtype=self.dtype)
        self.head = MlpHead(self.num_classes, head_dropout=self.head_dropout, dtype=self.dtype)

    def forward_stages(self, x, deterministic: bool = True):
        """Per-stage feature maps, NHWC at strides 4, 8, 16, 32: the multi-scale output for dense tasks."""
        if x.ndim != 4 or x.shape[-1] != self.in_chans:
            raise ValueError(f"MambaOut expects NHWC images with {self.in_chans} channels, got shape {x.shape}")
        x = constrain(x.astype(self.dtype), ACTIVATION_AXES)
        features = []
        for down, blocks in zip(self.downsample_layers, self.stages):
            x = down(x)
            for blk in blocks:
                x = blk(x, deterministic)
            features.append(x)
        return features

    def forward_features(self, x, deterministic: bool = True):
        x = self.forward_stages(x, deterministic)[-1]
        return self.norm(x.mean(axis=(1, 2)))

    def __call__(self, x, deterministic: bool = True):
        logits = self.head(self.forward_features(x, deterministic), deterministic)
        return logits.astype(jnp.float32)
