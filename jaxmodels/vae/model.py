"""Stable Diffusion's AutoencoderKL (the VAE DiT's latents come from), channels-last.

Module names are diffusers' (`encoder.down_blocks.0.resnets.0.norm1`, ...), so its
state_dict maps key by key. The encoder gives a diagonal Gaussian over latents with 8x
less resolution; the decoder maps latents back to images in [-1, 1]. Diffusion models
work on latents multiplied by `scaling_factor` (0.18215 for SD's VAE).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.nn import Conv, Dense, constrain
from jaxmodels.nn.attention import dot_product_attention

Dtype = Any
# Activations stay split over the batch (GSPMD alone gathers the decoder's whole batch on every device).
IMAGES = ("batch", "height", "width", "act_embed")


def GroupNorm(groups: int, name=None, dtype: Dtype = jnp.float32):
    """torch.nn.GroupNorm(groups, C, eps=1e-6) over NHWC (two-pass variance, as torch)."""
    return nn.GroupNorm(
        num_groups=groups,
        epsilon=1e-6,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name=name,
    )


class ResnetBlock2D(nn.Module):
    """GroupNorm, SiLU, 3x3 conv, twice, plus the input (through a 1x1 conv where the width changes)."""

    features: int
    groups: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = nn.silu(GroupNorm(self.groups, "norm1", self.dtype)(x))
        h = Conv(self.features, 3, padding=1, dtype=self.dtype, name="conv1")(h)
        h = nn.silu(GroupNorm(self.groups, "norm2", self.dtype)(h))
        h = Conv(self.features, 3, padding=1, dtype=self.dtype, name="conv2")(h)
        if x.shape[-1] != self.features:
            x = Conv(self.features, 1, dtype=self.dtype, name="conv_shortcut")(x)
        return constrain(x + h, IMAGES)


class Attention(nn.Module):
    """One-head self-attention over all positions, GroupNorm first, residual (the mid block's)."""

    groups: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        t = GroupNorm(self.groups, "group_norm", self.dtype)(x).reshape(b, h * w, 1, c)
        q, k, v = (Dense(c, ("embed", "mlp"), dtype=self.dtype, name=n)(t) for n in ("to_q", "to_k", "to_v"))
        out = dot_product_attention(q, k, v).reshape(b, h * w, c)
        out = Dense(c, ("mlp", "embed"), dtype=self.dtype, name="to_out_0")(out).reshape(b, h, w, c)
        return constrain(x + out, IMAGES)


class MidBlock(nn.Module):
    groups: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        x = ResnetBlock2D(c, self.groups, self.dtype, name="resnets_0")(x)
        x = Attention(self.groups, self.dtype, name="attentions_0")(x)
        return ResnetBlock2D(c, self.groups, self.dtype, name="resnets_1")(x)


class Downsample(nn.Module):
    """3x3 conv of stride 2 after padding one row and column at the bottom and right (diffusers' Downsample2D)."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return constrain(Conv(x.shape[-1], 3, stride=2, dtype=self.dtype, name="conv")(x), IMAGES)


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 conv."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = constrain(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2), IMAGES)
        return constrain(Conv(x.shape[-1], 3, padding=1, dtype=self.dtype, name="conv")(x), IMAGES)


class DownBlock(nn.Module):
    features: int
    layers: int
    groups: int
    downsample: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for j in range(self.layers):
            x = ResnetBlock2D(self.features, self.groups, self.dtype, name=f"resnets_{j}")(x)
        return Downsample(self.dtype, name="downsamplers_0")(x) if self.downsample else x


class UpBlock(nn.Module):
    features: int
    layers: int
    groups: int
    upsample: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for j in range(self.layers):
            x = ResnetBlock2D(self.features, self.groups, self.dtype, name=f"resnets_{j}")(x)
        return Upsample(self.dtype, name="upsamplers_0")(x) if self.upsample else x


class Encoder(nn.Module):
    block_out_channels: tuple
    layers_per_block: int
    groups: int
    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = Conv(self.block_out_channels[0], 3, padding=1, dtype=self.dtype, name="conv_in")(x)
        last, dt = len(self.block_out_channels) - 1, {"dtype": self.dtype}
        for i, features in enumerate(self.block_out_channels):
            x = DownBlock(features, self.layers_per_block, self.groups, i < last, name=f"down_blocks_{i}", **dt)(x)
        x = MidBlock(self.groups, self.dtype, name="mid_block")(x)
        x = nn.silu(GroupNorm(self.groups, "conv_norm_out", self.dtype)(x))
        return Conv(self.out_channels, 3, padding=1, dtype=self.dtype, name="conv_out")(x)


class Decoder(nn.Module):
    block_out_channels: tuple
    layers_per_block: int
    groups: int
    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z):
        x = Conv(self.block_out_channels[-1], 3, padding=1, dtype=self.dtype, name="conv_in")(z)
        x = MidBlock(self.groups, self.dtype, name="mid_block")(x)
        last, dt = len(self.block_out_channels) - 1, {"dtype": self.dtype}
        for i, features in enumerate(self.block_out_channels[::-1]):
            x = UpBlock(features, self.layers_per_block + 1, self.groups, i < last, name=f"up_blocks_{i}", **dt)(x)
        x = nn.silu(GroupNorm(self.groups, "conv_norm_out", self.dtype)(x))
        return Conv(self.out_channels, 3, padding=1, dtype=self.dtype, name="conv_out")(x)


class AutoencoderKL(nn.Module):
    """Images (B, H, W, 3) in [-1, 1] <-> latents (B, H/8, W/8, 4) (for four blocks)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    dtype: Dtype = jnp.float32

    def setup(self):
        arch = (self.block_out_channels, self.layers_per_block, self.norm_num_groups)
        self.encoder = Encoder(*arch, 2 * self.latent_channels, self.dtype)
        self.quant_conv = Conv(2 * self.latent_channels, 1, dtype=self.dtype)
        self.post_quant_conv = Conv(self.latent_channels, 1, dtype=self.dtype)
        self.decoder = Decoder(*arch, self.out_channels, self.dtype)

    def encode(self, images):
        """(mean, log-variance) of the Gaussian posterior over latents, float32; the log-variance
        clipped to [-30, 20] as diffusers' DiagonalGaussianDistribution."""
        moments = self.quant_conv(self.encoder(constrain(images, IMAGES))).astype(jnp.float32)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, latents):
        """Images (float32, about [-1, 1]) of latents (unscaled: divide diffusion latents by scaling_factor)."""
        images = self.decoder(self.post_quant_conv(constrain(latents.astype(self.dtype), IMAGES)))
        return constrain(images, IMAGES).astype(jnp.float32)

    def __call__(self, images, rng=None):
        """Reconstructions: through the posterior's mean, or a sample of it with rng."""
        mean, logvar = self.encode(images)
        latents = mean if rng is None else mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape)
        return self.decode(latents)
