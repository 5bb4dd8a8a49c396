"""Inception-v3 as FID computes it: pytorch-fid's FIDInceptionV3 (the TensorFlow graph
`pt_inception-2015-12-05` ported to torchvision's module names), channels-last.

Its differences from torchvision's Inception-v3 are pytorch-fid's: the average pools in
the A, C and first E blocks leave the padding out of the mean, the last E block pools by
maximum, and the classifier has 1008 outputs. Inputs are images in [0, 1] of any size,
resized to 299 x 299 bilinearly (half-pixel centres, no antialiasing: F.interpolate with
align_corners=False) and scaled to [-1, 1]. Outputs: the pool (2048, FID), the logits
without the classifier's bias (1008, the Inception Score as the original TF code and
ADM's evaluator compute it) and ADM's spatial features for sFID (the first 7 channels of
Mixed_6d's 1x1 branch, the graph's `mixed_6/conv`, 17 x 17 x 7 = 2023).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class BasicConv2d(nn.Module):
    """Convolution without bias, BatchNorm (eps 1e-3, running statistics), ReLU."""

    features: int
    kernel: tuple = (1, 1)
    stride: int = 1
    padding: tuple = (0, 0)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(
            self.features,
            self.kernel,
            strides=(self.stride, self.stride),
            padding=tuple((p, p) for p in self.padding),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, None, "conv_in", "embed")),
            name="conv",
        )(x)
        x = nn.BatchNorm(
            use_running_average=True,
            epsilon=1e-3,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name="bn",
        )(x)
        return nn.relu(x)


def _avg_pool(x):
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x, stride=2, padding=0):
    return nn.max_pool(x, (3, 3), (stride, stride), ((padding, padding), (padding, padding)))


class InceptionA(nn.Module):
    pool_features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        conv = lambda f, k=(1, 1), p=(0, 0), name=None: BasicConv2d(f, k, 1, p, self.dtype, name=name)  # noqa: E731
        b1 = conv(64, name="branch1x1")(x)
        b5 = conv(64, (5, 5), (2, 2), name="branch5x5_2")(conv(48, name="branch5x5_1")(x))
        b3 = conv(64, name="branch3x3dbl_1")(x)
        b3 = conv(96, (3, 3), (1, 1), name="branch3x3dbl_3")(conv(96, (3, 3), (1, 1), name="branch3x3dbl_2")(b3))
        bp = conv(self.pool_features, name="branch_pool")(_avg_pool(x))
        return jnp.concatenate([b1, b5, b3, bp], -1)


class InceptionB(nn.Module):
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(384, (3, 3), 2, dtype=self.dtype, name="branch3x3")(x)
        d = BasicConv2d(64, dtype=self.dtype, name="branch3x3dbl_1")(x)
        d = BasicConv2d(96, (3, 3), 1, (1, 1), self.dtype, name="branch3x3dbl_2")(d)
        d = BasicConv2d(96, (3, 3), 2, dtype=self.dtype, name="branch3x3dbl_3")(d)
        return jnp.concatenate([b3, d, _max_pool(x)], -1)


class InceptionC(nn.Module):
    channels_7x7: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.channels_7x7
        conv = lambda f, k=(1, 1), p=(0, 0), name=None: BasicConv2d(f, k, 1, p, self.dtype, name=name)  # noqa: E731
        row, column = ((1, 7), (0, 3)), ((7, 1), (3, 0))
        b1 = conv(192, name="branch1x1")(x)
        b7 = conv(c, name="branch7x7_1")(x)
        b7 = conv(192, *column, name="branch7x7_3")(conv(c, *row, name="branch7x7_2")(b7))
        d = conv(c, name="branch7x7dbl_1")(x)
        for i, (f, shape) in enumerate([(c, column), (c, row), (c, column), (192, row)], start=2):
            d = conv(f, *shape, name=f"branch7x7dbl_{i}")(d)
        bp = conv(192, name="branch_pool")(_avg_pool(x))
        return jnp.concatenate([b1, b7, d, bp], -1)


class InceptionD(nn.Module):
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(192, dtype=self.dtype, name="branch3x3_1")(x)
        b3 = BasicConv2d(320, (3, 3), 2, dtype=self.dtype, name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, dtype=self.dtype, name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), 1, (0, 3), self.dtype, name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), 1, (3, 0), self.dtype, name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, (3, 3), 2, dtype=self.dtype, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool(x)], -1)


class InceptionE(nn.Module):
    max_pool: bool  # the last block (pytorch-fid's FIDInceptionE_2); else an average pool without padding
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        conv = lambda f, k=(1, 1), p=(0, 0), name=None: BasicConv2d(f, k, 1, p, self.dtype, name=name)  # noqa: E731
        row, column = ((1, 3), (0, 1)), ((3, 1), (1, 0))
        b1 = conv(320, name="branch1x1")(x)
        b3 = conv(384, name="branch3x3_1")(x)
        b3 = [conv(384, *row, name="branch3x3_2a")(b3), conv(384, *column, name="branch3x3_2b")(b3)]
        d = conv(384, (3, 3), (1, 1), name="branch3x3dbl_2")(conv(448, name="branch3x3dbl_1")(x))
        d = [conv(384, *row, name="branch3x3dbl_3a")(d), conv(384, *column, name="branch3x3dbl_3b")(d)]
        pooled = _max_pool(x, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return jnp.concatenate([b1, *b3, *d, conv(192, name="branch_pool")(pooled)], -1)


class FIDInceptionV3(nn.Module):
    """Images (N, H, W, 3) in [0, 1] -> {"pool": (N, 2048), "logits": (N, 1008), "spatial": (N, 2023)}."""

    num_classes: int = 1008
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images):
        n = images.shape[0]
        x = images.astype(jnp.float32)
        if x.shape[1:3] != (299, 299):
            x = jax.image.resize(x, (n, 299, 299, x.shape[3]), "bilinear", antialias=False)
        x = (2 * x - 1).astype(self.dtype)
        dt = {"dtype": self.dtype}
        x = BasicConv2d(32, (3, 3), 2, name="Conv2d_1a_3x3", **dt)(x)
        x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3", **dt)(x)
        x = _max_pool(BasicConv2d(64, (3, 3), 1, (1, 1), name="Conv2d_2b_3x3", **dt)(x))
        x = BasicConv2d(80, name="Conv2d_3b_1x1", **dt)(x)
        x = _max_pool(BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3", **dt)(x))
        for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = InceptionA(pool_features, name=name, **dt)(x)
        x = InceptionB(name="Mixed_6a", **dt)(x)
        for name, channels in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(channels, name=name, **dt)(x)
            if name == "Mixed_6d":  # its 1x1 branch's channels come first in the block's output
                spatial = x[..., :7]
        x = InceptionD(name="Mixed_7a", **dt)(x)
        x = InceptionE(False, name="Mixed_7b", **dt)(x)
        x = InceptionE(True, name="Mixed_7c", **dt)(x)
        pool = x.astype(jnp.float32).mean((1, 2))
        logits = nn.Dense(
            self.num_classes,
            use_bias=False,
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "classes")),
            name="fc",
        )(pool)
        return {"pool": pool, "logits": logits, "spatial": spatial.astype(jnp.float32).reshape(n, -1)}
