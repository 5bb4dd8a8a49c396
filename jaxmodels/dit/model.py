"""DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers"), as facebookresearch/DiT.

Patchify, fixed 2-D sin-cos positions, timestep and class embeddings summed into one
conditioning vector c, adaLN-Zero transformer blocks, and a modulated linear decoder
that predicts noise (and, with learn_sigma, the variance interpolation). Channels-last:
x is (N, H, W, C) in and (N, H, W, C_out) out. Parameter names follow upstream's
state_dict; the blocks are one module scanned over their stacked parameters
(`blocks.3.adaLN_modulation.1` is row 3 of `blocks/adaLN_modulation_1`): XLA compiles
one block, not 28, and cannot fuse the backward across blocks, which XLA:CPU does to
unrolled blocks at a 2.5x slower step (DiT-XL/2, benchmarks/dit_train_step.py).
On GPUs the loop's per-block slices and stacked-gradient copies cost more than they
save, so there the blocks are unrolled (BLOCK_UNROLL).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.nn.attention import Attention
from jaxmodels.nn.layers import Conv, Dense, constrain, gelu_tanh, repeated

# Blocks per loop iteration by backend (0: all of them); read when the model is traced. An
# H200's bf16 DiT-XL/2 train step, batch 32: 85.7 ms one block per iteration, 83.0 four,
# 58.5 ms all 28 unrolled (benchmarks/dit_train_step.py --unroll 1,4,0).
BLOCK_UNROLL = {"gpu": 0}

xavier = nn.initializers.xavier_uniform()
zeros = nn.initializers.zeros


def timestep_embedding(t, dim: int = 256, max_period: float = 10000.0):
    """[cos(t f), sin(t f)] with f = max_period^(-k/half), float32; t may be fractional."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def sincos_pos_embed_2d(dim: int, grid: int) -> np.ndarray:
    """The fixed (grid*grid, dim) table of MAE/DiT: [sin, cos] of the column, then of the row."""
    if dim % 4:
        raise ValueError(f"hidden_size {dim} must be divisible by 4 for the 2-D sin-cos table")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")

    def one(pos):
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one(cols), one(rows)], axis=1).astype(np.float32)


@jax.custom_vjp
def modulated_norm(x, shift, scale):
    """LayerNorm(x) (eps 1e-6, no affine) * (1 + scale) + shift, per example; statistics and sums in
    float32, the result in x's dtype. Its backward keeps x and the statistics alone: autodiff's kept
    four (N, L, D) intermediates per norm, which the blocks' loop writes and reads back every step."""
    return _modulated_norm_fwd(x, shift, scale)[0]


def _modulated_norm_fwd(x, shift, scale):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.square(x32 - mean).mean(-1, keepdims=True) + 1e-6)
    y = (x32 - mean) * rstd * (1 + scale[:, None].astype(jnp.float32)) + shift[:, None].astype(jnp.float32)
    return y.astype(x.dtype), (x, mean, rstd, shift, scale)


def _modulated_norm_bwd(residuals, g):
    x, mean, rstd, shift, scale = residuals
    g = g.astype(jnp.float32)
    normed = (x.astype(jnp.float32) - mean) * rstd
    d_normed = g * (1 + scale[:, None].astype(jnp.float32))
    dx = rstd * (d_normed - d_normed.mean(-1, keepdims=True) - normed * (d_normed * normed).mean(-1, keepdims=True))
    return dx.astype(x.dtype), g.sum(1).astype(shift.dtype), (g * normed).sum(1).astype(scale.dtype)


modulated_norm.defvjp(_modulated_norm_fwd, _modulated_norm_bwd)


class PatchEmbed(nn.Module):
    hidden_size: int
    patch_size: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        # Initialised as a Linear over the flattened patch, as upstream.
        init = nn.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=3)
        x = Conv(
            self.hidden_size, self.patch_size, stride=self.patch_size, dtype=self.dtype, kernel_init=init, name="proj"
        )(x)
        n, h, w, d = x.shape
        return x.reshape(n, h * w, d)  # token index = row * w + column


class TimestepEmbedder(nn.Module):
    hidden_size: int
    frequency_embedding_size: int = 256
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, t):
        init = nn.initializers.normal(0.02)
        t_freq = timestep_embedding(t, self.frequency_embedding_size)
        x = Dense(self.hidden_size, (None, "embed"), dtype=self.dtype, kernel_init=init, name="mlp_0")(t_freq)
        return Dense(self.hidden_size, ("mlp", "embed"), dtype=self.dtype, kernel_init=init, name="mlp_2")(nn.silu(x))


class LabelEmbedder(nn.Module):
    """Class embedding; label `num_classes` is the null label that classifier-free guidance drops to."""

    num_classes: int
    hidden_size: int
    dropout_prob: float

    @nn.compact
    def __call__(self, labels, train: bool, force_drop_ids=None):
        table = self.param(
            "embedding_table",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
            (self.num_classes + (self.dropout_prob > 0), self.hidden_size),
        )
        if force_drop_ids is not None:
            labels = jnp.where(force_drop_ids == 1, self.num_classes, labels)
        elif train and self.dropout_prob > 0:
            u = jax.random.uniform(self.make_rng("dropout"), labels.shape, jnp.float32)
            labels = jnp.where(u < self.dropout_prob, self.num_classes, labels)
        return jnp.take(table, labels, axis=0)


class Mlp(nn.Module):
    hidden_features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        x = Dense(self.hidden_features, ("embed", "mlp"), dtype=self.dtype, kernel_init=xavier, name="fc1")(x)
        x = constrain(gelu_tanh(x), ("batch", "length", "mlp"))
        return Dense(d, ("mlp", "embed"), dtype=self.dtype, kernel_init=xavier, name="fc2")(x)


class DiTBlock(nn.Module):
    """adaLN-Zero: shift, scale and gate for attention and MLP regressed from c (zero-initialised).
    With ``lengths`` (N,), each row attends to its first tokens only (a padded sequence)."""

    hidden_size: int
    num_heads: int
    mlp_ratio: float = 4.0
    dtype: jnp.dtype = jnp.float32
    attention: str | None = None

    @nn.compact
    def __call__(self, x, c, lengths=None):
        d = self.hidden_size
        mod = Dense(6 * d, ("embed", "mlp"), dtype=self.dtype, kernel_init=zeros, name="adaLN_modulation_1")(
            nn.silu(c)
        )
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)
        h = modulated_norm(x, shift_msa, scale_msa)
        attention = Attention(self.num_heads, dtype=self.dtype, implementation=self.attention, name="attn")
        x = x + gate_msa[:, None] * attention(h, lengths)
        h = modulated_norm(x, shift_mlp, scale_mlp)
        x = x + gate_mlp[:, None] * Mlp(int(d * self.mlp_ratio), dtype=self.dtype, name="mlp")(h)
        return constrain(x, ("batch", "length", "act_embed"))


def stacked_blocks(depth: int, remat: bool = False):
    """``depth`` DiTBlocks as one module over stacked parameters ("blocks"), looped or unrolled
    as BLOCK_UNROLL says for the backend; called as (x, c[, lengths]) -> (x, None)."""
    unroll = BLOCK_UNROLL.get(jax.default_backend(), 1) or depth
    return repeated(nn.remat(DiTBlock) if remat else DiTBlock, depth, unroll)


class FinalLayer(nn.Module):
    hidden_size: int
    patch_size: int
    out_channels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, c):
        mod = Dense(
            2 * self.hidden_size, ("embed", "mlp"), dtype=self.dtype, kernel_init=zeros, name="adaLN_modulation_1"
        )(nn.silu(c))
        shift, scale = jnp.split(mod, 2, axis=-1)
        x = modulated_norm(x, shift, scale)
        return Dense(
            self.patch_size**2 * self.out_channels, ("embed", None), dtype=self.dtype, kernel_init=zeros, name="linear"
        )(x)


class DiT(nn.Module):
    """Diffusion transformer; the constructor takes upstream's argument names and defaults (DiT-XL/2)."""

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True
    dtype: jnp.dtype = jnp.float32  # compute dtype; parameters stay float32
    remat: bool = False  # recompute each block's activations in the backward pass
    attention: str | None = None  # "xla", "cudnn"; None: cuDNN's fused attention on GPUs in 16 bits

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def num_patches(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    def pos_embed(self) -> np.ndarray:
        return sincos_pos_embed_2d(self.hidden_size, self.input_size // self.patch_size)

    @nn.compact
    def __call__(self, x, t, y, train: bool = False, force_drop_ids=None):
        """x (N, H, W, C), t (N,) timesteps (may be fractional), y (N,) labels -> (N, H, W, C_out)."""
        n, height, width, channels = x.shape
        if (height, width, channels) != (self.input_size, self.input_size, self.in_channels):
            raise ValueError(
                f"DiT expects (N, {self.input_size}, {self.input_size}, {self.in_channels}) inputs, got {x.shape}"
            )
        x = constrain(x, ("batch", "height", "width", None))
        x = PatchEmbed(self.hidden_size, self.patch_size, self.dtype, name="x_embedder")(x)
        x = x + jnp.asarray(self.pos_embed(), x.dtype)
        c = TimestepEmbedder(self.hidden_size, dtype=self.dtype, name="t_embedder")(t)
        c = c + LabelEmbedder(self.num_classes, self.hidden_size, self.class_dropout_prob, name="y_embedder")(
            y, train, force_drop_ids
        ).astype(c.dtype)
        block = stacked_blocks(self.depth, self.remat)
        x, _ = block(self.hidden_size, self.num_heads, self.mlp_ratio, self.dtype, self.attention, name="blocks")(x, c)
        x = FinalLayer(self.hidden_size, self.patch_size, self.out_channels, self.dtype, name="final_layer")(x, c)
        return self.unpatchify(x)

    def unpatchify(self, x):
        p, c = self.patch_size, self.out_channels
        n, tokens, _ = x.shape
        h = w = int(math.isqrt(tokens))
        x = x.reshape(n, h, w, p, p, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(n, h * p, w * p, c)

    def forward_with_cfg(self, x, t, y, cfg_scale, guide_all_channels: bool = False):
        """Classifier-free guidance on a batch of [conditional; null-label] halves, as upstream.

        Only the first half of x is used (duplicated); t and y are used whole. Guidance
        uncond + s (cond - uncond) goes to the first 3 output channels as upstream does
        for exact reproducibility, or to the whole noise prediction (in_channels) with
        guide_all_channels; the guided values are written to both halves.
        """
        half = x[: x.shape[0] // 2]
        out = self(jnp.concatenate([half, half], axis=0), t, y)
        k = self.in_channels if guide_all_channels else 3
        eps, rest = out[..., :k], out[..., k:]
        cond, uncond = jnp.split(eps, 2, axis=0)
        guided = uncond + cfg_scale * (cond - uncond)
        return jnp.concatenate([jnp.concatenate([guided, guided], axis=0), rest], axis=-1)
