"""Dense, convolution and norm layers whose parameters carry logical axis names.

The names are the vocabulary the trainer's one table of rules maps onto mesh axes
(trainers/sharding.py): "embed" (model width), "mlp" (hidden width of MLPs and gated
blocks), "conv_in" (input channels of a dense convolution), "classes" (classifier
output), "layers" (the stacking axis of repeated layers), "batch"/"height"/"width" for
activations. A model never names a mesh axis.
"""

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Upstream PyTorch initialises Linear/Conv weights with trunc_normal(std=0.02) and
# biases with zeros (timm's _init_weights); we use the same so fresh models match.
default_kernel_init = nn.initializers.truncated_normal(stddev=0.02)


def constrain(x, axes: Sequence[str | None]):
    """Constrains an activation's sharding by logical axis names (no-op outside a mesh)."""
    return nn.with_logical_constraint(x, tuple(axes))


def gelu(x):
    """torch.nn.GELU(): x/2 (1 + erf(x/sqrt(2))), the exact form, computed as PyTorch does. jax.nn.gelu's
    exact form goes through erfc, whose selects and exponential XLA:CPU evaluates again in the backward
    pass: about 4% of MambaOut-Tiny's CPU train step (BENCHMARKS.md), for values within 1e-6."""
    return 0.5 * x * (1 + jax.lax.erf(x * jnp.asarray(0.5**0.5, x.dtype)))


@jax.custom_vjp
def gelu_tanh(x):
    """torch.nn.GELU(approximate="tanh"): jax.nn.gelu(x, approximate=True), its backward from x alone
    (the slope computed again, in float32). Autodiff keeps four more arrays of x's size for it,
    which DiT's loop over its blocks writes out and reads back every step: its XL/2 train step on
    a CPU was 9% slower with them (BENCHMARKS.md)."""
    return jax.nn.gelu(x, approximate=True)


def _gelu_tanh_fwd(x):
    return jax.nn.gelu(x, approximate=True), x


def _gelu_tanh_bwd(x, g):
    # With u = sqrt(2/pi) (x + 0.044715 x^3): (1 + tanh u) / 2 = sigmoid(2u) and (1 - tanh^2 u) / 2 =
    # 2 sigmoid(2u) sigmoid(-2u), which keep their precision in both tails, where 1 - tanh^2 does not.
    c = math.sqrt(2 / math.pi)
    x32 = x.astype(jnp.float32)
    u2 = 2 * c * (x32 + 0.044715 * x32**3)
    s = jax.nn.sigmoid(u2)
    slope = s + 2 * x32 * s * jax.nn.sigmoid(-u2) * c * (1 + 3 * 0.044715 * x32 * x32)
    return ((g * slope).astype(x.dtype),)


gelu_tanh.defvjp(_gelu_tanh_fwd, _gelu_tanh_bwd)


def repeated(layer: type[nn.Module], length: int, unroll: int = 1):
    """``length`` copies of ``layer`` applied in turn, as one module scanned over a stack of
    their parameters (leading axis "layers"): XLA compiles the layer once, not ``length``
    times. The module takes ``(x, *args)``, ``args`` the same for every layer, and returns
    ``(x, None)``; ``layer(x, *args)`` returns x. ``layer`` may be an ``nn.remat`` of one. A
    decoding cache the layer keeps is stacked the same way, as are captured intermediates.
    ``unroll`` layers run per loop iteration (``length``: no loop left, the stacked
    parameters sliced at fixed offsets)."""

    class Step(layer):
        def __call__(self, x, *args):
            return super().__call__(x, *args), None

    Step.__name__ = layer.__name__
    return nn.scan(
        Step,
        variable_axes={"params": 0, "cache": 0, "intermediates": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=nn.broadcast,
        length=length,
        unroll=unroll,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dense_product(x, kernel, in_dims: int = 1):
    """x's last ``in_dims`` axes contracted with the kernel's first (x @ kernel for a 2-D kernel),
    its kernel gradient contracting x and the output gradient over x's leading axes.

    Autodiff's form of that gradient has XLA:CPU copy the output gradient transposed and multiply
    in Eigen, or, for a kernel of several output axes (attention's (embed, 3, heads, head_dim)),
    multiply in YNNPACK and write the product transposed; this form has it copy x and multiply in
    YNNPACK, the product in the kernel's layout. DiT-XL/2's MLP forward and backward 21% faster,
    MambaOut's Gated CNN blocks 11%, DiT-XL/2's train step 3% more for the attention's projections
    and 2% for fc2 (BENCHMARKS.md). The same sums on any backend."""
    return jnp.tensordot(x, kernel, in_dims)


def _dense_product_fwd(x, kernel, in_dims):
    return jnp.tensordot(x, kernel, in_dims), (x, kernel)


def _dense_product_bwd(in_dims, residuals, g):
    x, kernel = residuals
    lead = x.ndim - in_dims
    dx = jnp.tensordot(g, kernel, (tuple(range(lead, g.ndim)), tuple(range(in_dims, kernel.ndim))))
    return dx, jnp.tensordot(x, g, (tuple(range(lead)), tuple(range(lead))))


dense_product.defvjp(_dense_product_fwd, _dense_product_bwd)


def _dense_dot_general(x, kernel, dimension_numbers, precision=None):
    """nn.Dense's product (x's last axis with the kernel's first) as ``dense_product``."""
    return dense_product(x, kernel)


def Dense(
    features: int,
    axes=("embed", "mlp"),
    use_bias: bool = True,
    dtype: Dtype = jnp.float32,
    kernel_init=default_kernel_init,
    name=None,
):
    """A linear layer, kernel (in, out) named by ``axes``."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(kernel_init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]),
        dot_general=_dense_dot_general,
        name=name,
    )


def Conv(
    features: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
    axes=(None, None, "conv_in", "embed"),
    dtype: Dtype = jnp.float32,
    kernel_init=default_kernel_init,
    name=None,
):
    """A 2-D convolution (NHWC), kernel (kh, kw, in/groups, out).

    ``padding`` is symmetric and explicit, as PyTorch's ``padding=p``; ``groups`` is
    PyTorch's (``groups == features`` is a depthwise convolution).
    """
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        feature_group_count=groups,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(kernel_init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]),
        name=name,
    )


def grouped_conv(x, kernel, strides, padding, groups: int, dimension_numbers, rhs_dilation=None):
    """lax.conv_general_dilated with `groups` feature groups (kernel (..., in / groups, out)).

    XLA's SPMD partitioner all-gathers a batch-sharded input of a convolution whose groups
    hold several channels each (depthwise ones partition), so that every device computes
    the whole batch: such groups run here as one convolution each, which partitions over
    the batch and gives the same result. On the CPU a 2-D convolution strided differently
    along its two axes (a spectrogram discriminator's (1, 2)) takes its input gradient by
    `_upsampled_input_gradient`.
    """
    strides, padding = tuple(strides), tuple(tuple(p) for p in padding)
    conv = lambda a, w, g: _conv(a, w, strides, padding, dimension_numbers, rhs_dilation, g)  # noqa: E731
    if groups == 1 and jax.default_backend() == "cpu" and len(set(strides)) > 1 and min(kernel.shape[:-2]) > 1:
        return _upsampled_input_gradient(x, kernel, strides, padding, tuple(dimension_numbers), rhs_dilation)
    if groups in (1, x.shape[-1]):
        return conv(x, kernel, groups)
    pieces = zip(jnp.split(x, groups, axis=-1), jnp.split(kernel, groups, axis=-1))
    return jnp.concatenate([conv(a, w, 1) for a, w in pieces], axis=-1)


def _conv(x, kernel, strides, padding, dimension_numbers, rhs_dilation, groups=1):
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        strides,
        padding,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=groups,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _upsampled_input_gradient(x, kernel, strides, padding, dimension_numbers, rhs_dilation):
    """A strided convolution whose input gradient is the stride-1 convolution's, of the output
    gradient spread over the stride-1 output's grid (zeros between). Autodiff's is a convolution
    with input dilation, which XLA:CPU gives its library only where the dilation is the same
    along every axis or the kernel is 1 wide: otherwise naive loops, 4-7x slower than this at
    HiFT's spectrogram discriminator (docs/cosyvoice.md)."""
    return _conv(x, kernel, strides, padding, dimension_numbers, rhs_dilation)


def _upsampled_fwd(x, kernel, strides, padding, dimension_numbers, rhs_dilation):
    return _conv(x, kernel, strides, padding, dimension_numbers, rhs_dilation), (x, kernel)


def _upsampled_bwd(strides, padding, dimension_numbers, rhs_dilation, residuals, g):
    x, kernel = residuals
    _, kernel_vjp = jax.vjp(lambda k: _conv(x, k, strides, padding, dimension_numbers, rhs_dilation), kernel)
    ones = (1,) * len(strides)
    full, input_vjp = jax.vjp(lambda a: _conv(a, kernel, ones, padding, dimension_numbers, rhs_dilation), x)
    spatial = [c for c in dimension_numbers[0] if c not in "NC"]
    grid = tuple(
        slice(None, None, strides[spatial.index(c)]) if c in spatial else slice(None) for c in dimension_numbers[2]
    )
    (dx,) = input_vjp(jnp.zeros(full.shape, g.dtype).at[grid].set(g))
    return dx, kernel_vjp(g)[0]


_upsampled_input_gradient.defvjp(_upsampled_fwd, _upsampled_bwd)


def LayerNorm(epsilon: float = 1e-6, axis_name: str = "embed", dtype: Dtype = jnp.float32, name=None):
    """LayerNorm over the last axis with PyTorch's numerics (two-pass variance)."""
    return nn.LayerNorm(
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=jnp.float32,
        use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis_name,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis_name,)),
        name=name,
    )


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample (timm's DropPath).

    Kept samples are scaled by 1/(1-rate); draws from the "dropout" RNG stream.
    """

    rate: float

    @nn.compact
    def __call__(self, x, deterministic: bool):
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        return jnp.where(mask, x / keep, jnp.zeros_like(x))


def _shifted_sum(x, kernel):
    """sum over taps (i, j) of x shifted by (i - p, j - p), times kernel[i, j, 0]; zero padding."""
    k, (h, w) = kernel.shape[0], x.shape[1:3]
    p = k // 2
    padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    out = jnp.zeros_like(x)
    for i in range(k):
        for j in range(k):
            out = out + padded[:, i : i + h, j : j + w, :] * kernel[i, j, 0]
    return out


@jax.custom_vjp
def _depthwise_cpu(x, kernel):
    return _shifted_sum(x, kernel)


def _depthwise_cpu_fwd(x, kernel):
    return _shifted_sum(x, kernel), (x, kernel)


def _sums(operands, axes):
    """Each operand summed over ``axes``, all in one variadic reduce.

    XLA:CPU runs that as one loop over the operands' common index space. Summed one by one,
    each sum of a sliced product becomes a YNNPACK reduction whose input slice XLA first copies
    out, 3-6x slower for the depthwise kernel gradient at MambaOut's shapes. 16-bit floats are
    summed in float32, as jnp.sum sums them."""
    operands = tuple(x.astype(jnp.promote_types(x.dtype, jnp.float32)) for x in operands)
    zeros = tuple(jnp.zeros((), x.dtype) for x in operands)
    return jax.lax.reduce(operands, zeros, lambda a, b: tuple(u + v for u, v in zip(a, b)), axes)


def _kernel_gradient(x, g, k):
    """(k*k, C): for each tap (i, j), x shifted by (i - p, j - p) times g, summed over (N, H, W).

    A scan over blocks of k output rows: each step sums the k*k products of its block's 2k - 1
    input rows while they are in cache, where summing each tap over the whole batch read x and
    g from memory k*k times (1.5-2x slower at MambaOut's shapes on 2 cores). The k taps of a
    kernel row are one variadic reduce (``_sums``). Each example's sums stay apart until the end:
    with the batch sharded that is one all-reduce of the whole kernel, where autodiff of the
    shifted sum reduces (and all-reduces) each tap on its own."""
    n, h, w, c = x.shape
    p, blocks = k // 2, -(-h // k)
    g = jnp.pad(g, ((0, 0), (0, blocks * k - h), (0, 0), (0, 0)))  # zero rows add nothing
    padded = jnp.pad(x, ((0, 0), (p, p + blocks * k - h), (p, p), (0, 0)))

    def block(total, b):
        slab = jax.lax.dynamic_slice_in_dim(padded, b * k, 2 * k - 1, axis=1)
        grad = jax.lax.dynamic_slice_in_dim(g, b * k, k, axis=1)
        taps = [t for i in range(k) for t in _sums([slab[:, i : i + k, j : j + w] * grad for j in range(k)], (1, 2))]
        return total + jnp.stack(taps, 1), None

    total, _ = jax.lax.scan(
        block, jnp.zeros((n, k * k, c), jnp.promote_types(x.dtype, jnp.float32)), jnp.arange(blocks)
    )
    return total.sum(0)


def _depthwise_cpu_bwd(residuals, g):
    x, kernel = residuals
    dx = _shifted_sum(g, kernel[::-1, ::-1])  # the transposed convolution: the kernel flipped
    return dx, _kernel_gradient(x, g, kernel.shape[0]).reshape(kernel.shape).astype(kernel.dtype)


_depthwise_cpu.defvjp(_depthwise_cpu_fwd, _depthwise_cpu_bwd)


def depthwise_conv(x, kernel):
    """Stride-1 'same' depthwise convolution, NHWC input, kernel (k, k, 1, C), odd k.

    XLA:CPU lowers grouped convolutions poorly: summing k*k shifted products, which XLA
    fuses into one loop, is 2-7x faster for fwd+bwd at MambaOut's shapes with the same
    result (benchmarks/mambaout_train_step.py). Accelerators keep the native convolution.
    """
    if jax.default_backend() != "cpu":
        p = kernel.shape[0] // 2
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            (1, 1),
            ((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=x.shape[-1],
        )
    return _depthwise_cpu(x, kernel)


class DepthwiseConv(nn.Module):
    """Depthwise k x k convolution with bias ('same' padding), parameters as nn.Conv's."""

    kernel_size: int
    axes: tuple = (None, None, None, "conv_channels")
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(default_kernel_init, self.axes),
            (self.kernel_size, self.kernel_size, 1, c),
            jnp.float32,
        )
        bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros, self.axes[-1:]), (c,), jnp.float32
        )
        x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
        return depthwise_conv(x, kernel) + bias
