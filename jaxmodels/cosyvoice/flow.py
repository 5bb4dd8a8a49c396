"""CosyVoice's flow-matching decoder (cosyvoice/flow/flow.py MaskedDiffWithXvec, with the
Conformer encoder of cosyvoice/transformer, the length regulator of flow/length_regulator.py
and the estimator of flow/decoder.py after Matcha-TTS's 1-D U-Net): speech tokens (50 Hz),
a speaker embedding and a prompt's mel -> mel frames (22.05 kHz / 256), channels-last.

Tokens are embedded (padding zeroed), encoded by six pre-norm Transformer layers with ESPnet's
relative-position attention (CosyVoice-300M's ConformerEncoder: no macaron, no convolution
module) and projected to the 80 mel bins; the length regulator interpolates them linearly to
the mel frame rate and refines them (four convolutions with one-group GroupNorm and Mish).
The estimator sees the noisy mel, that mean, the projected unit-length speaker embedding and
the prompt's mel (zeros past the prompt) stacked along channels, and predicts the flow's
velocity through a U-Net of ResNet blocks (GroupNorm of 8 groups, Mish, the time embedding
added) and Transformer blocks, two resolutions and twelve mid blocks (scanned).
flow_matching.py trains and samples it.

CosyVoice 2's CausalMaskedDiffWithXvec (`flow_cosyvoice2`) replaces the encoder and the length
regulator by the UpsampleConformerEncoder (25 Hz tokens to two 50 Hz frames each) and the
estimator's blocks by causal ones (convolutions over past frames, LayerNorm); half its training
batches attend within chunks (streaming).

Module names are upstream's, dots as underscores; the encoder layers and the mid blocks are
stacked along a leading "layers" axis.
"""

import dataclasses
import functools
import math
import re
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.codec.seanet import conv_transpose, torch_uniform
from jaxmodels.cosyvoice import flow_matching as fm
from jaxmodels.cosyvoice.encoder import FRAMES, ConformerEncoder, UpsampleConformerEncoder, layer_path
from jaxmodels.dit.model import FinalLayer, TimestepEmbedder, stacked_blocks
from jaxmodels.nn import Dense, LayerNorm, constrain, gelu, repeated, variants
from jaxmodels.nn.attention import chunk_mask, dot_product_attention
from jaxmodels.nn.layers import default_kernel_init, grouped_conv
from jaxmodels.nn.state_dict import assign_state_dict, load_state_dict, module_path, stack_layers
from jaxmodels.nn.variants import named_config
from jaxmodels.speechlm.transformer import Embed


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """MaskedDiffWithXvec's arguments and its parts' (upstream's names); defaults CosyVoice-300M's."""

    vocab_size: int = 4096
    input_size: int = 512  # token embedding and encoder width
    output_size: int = 80  # mel bins
    spk_embed_dim: int = 192  # CAM++ x-vector
    input_frame_rate: int = 50  # tokens a second
    sample_rate: int = 22050
    hop_length: int = 256  # mel frames: sample_rate / hop_length a second
    attention_heads: int = 8  # encoder
    linear_units: int = 2048
    num_blocks: int = 6
    regulator_stages: int = 4  # len(length_regulator.sampling_ratios)
    # CosyVoice 2 (CausalMaskedDiffWithXvec): > 0, mel frames per token made by the upsampling
    # encoder instead of the length regulator, its look-ahead and its later layers
    token_mel_ratio: int = 0
    pre_lookahead_len: int = 3
    up_blocks: int = 4
    causal: bool = False  # the estimator's causal convolutions and LayerNorm blocks (CosyVoice 2's)
    chunk_size: int = 0  # > 0: half the training batches attend within chunks of this many tokens
    channels: Sequence[int] = (256, 256)  # estimator
    attention_head_dim: int = 64
    n_blocks: int = 4
    num_mid_blocks: int = 12
    num_heads: int = 8
    # "unet": Matcha-TTS's U-Net above (the released flow.pt's); "dit": DiTEstimator, at
    # CosyVoice 3's sizes by default
    estimator: str = "unet"
    dit_hidden: int = 1024
    dit_depth: int = 22
    dit_heads: int = 16
    dit_mlp_ratio: float = 2.0
    cfm: fm.CFMConfig = fm.CFMConfig()
    # Matcha-TTS's data statistics (its mel_mean, mel_std): the flow models (mel - mel_mean) /
    # mel_std and returns mels as given. CosyVoice's released models model the log-mels as they
    # are (0, 1); on them the demo's small estimator had not learnt to remove the noise it
    # starts from after 3000 steps (docs/cosyvoice.md).
    mel_mean: float = 0.0
    mel_std: float = 1.0
    # > 0: Matcha-TTS's prior loss at this weight (Matcha's 1.0; CosyVoice has none): the
    # regulated mean mu, which the estimator reads, is itself made to predict the normalised mel
    # (half its squared error over the scored frames and bins)
    prior_loss_weight: float = 0.0
    # > 0: sampling enters the flow's path at this time from mu and the noise
    # (flow_matching.sample; DiffSinger's shallow diffusion) instead of from the noise alone at 0
    # as CosyVoice does: the estimator refines the prior's mel rather than drawing one anew
    start_time: float = 0.0

    def __post_init__(self):
        if self.start_time and not self.prior_loss_weight:
            raise ValueError(
                f"start_time {self.start_time} needs prior_loss_weight > 0: only the prior loss trains mu "
                "to stand for the mel the path ends at"
            )

    def mel_frames(self, tokens: int) -> int:
        """Mel frames the regulator (or the upsampling encoder) makes of `tokens` tokens, as upstream rounds them."""
        if self.token_mel_ratio:
            return tokens * self.token_mel_ratio
        return int(tokens / self.input_frame_rate * self.sample_rate / self.hop_length)


CONFIGS = {
    "flow_cosyvoice_300m": FlowConfig(),  # 104,874,752 parameters
    "flow_cosyvoice_300m_25hz": FlowConfig(input_frame_rate=25),
    "flow_cosyvoice2": FlowConfig(  # CosyVoice2-0.5B's flow.pt: 24 kHz, 50 Hz mel, 25 Hz FSQ tokens
        vocab_size=6561,
        input_frame_rate=25,
        sample_rate=24000,
        hop_length=480,
        token_mel_ratio=2,
        channels=(256,),
        causal=True,
        chunk_size=25,
    ),
}


def mish(x):
    return x * jnp.tanh(jax.nn.softplus(x))


def interpolate(x, frames: int):
    """torch's F.interpolate(mode="linear", align_corners=False) along axis 1 of (B, L, C) to
    `frames` (no antialiasing, unlike jax.image.resize when it shrinks)."""
    length = x.shape[1]
    if frames == 0 or length == 0:
        return jnp.zeros((x.shape[0], frames, x.shape[2]), x.dtype)
    scale = np.float32(length) / np.float32(frames)
    source = np.maximum((np.arange(frames, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    left = np.floor(source).astype(np.int32)
    right = np.minimum(left + 1, length - 1)
    weight = jnp.asarray((source - left)[None, :, None], x.dtype)
    return x[:, left] * (1 - weight) + x[:, right] * weight


# ConditionalDecoder.initialize_weights: the estimator's Conv1d and Linear weights kaiming-normal
# (ReLU's gain, fan in), their biases zero
ESTIMATOR_INIT = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def _conv(features, kernel, name, stride=1, padding=None, dtype=jnp.float32, causal=False, init=default_kernel_init):
    """torch's Conv1d on (B, T, C), padding (k - 1) // 2 unless given (causal: k - 1 on the
    left alone), kernel (k, in, out)."""
    pad = (kernel - 1) // 2 if padding is None else padding
    return nn.Conv(
        features,
        (kernel,),
        (stride,),
        ((kernel - 1, 0),) if causal else ((pad, pad),),
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(init, (None, "conv_in", "embed")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name=name,
    )


def _group_norm(groups, name, dtype):
    """torch's GroupNorm, its statistics over the frames of m (B, T, 1) alone: (x, m) -> x normalised.
    Upstream's take a padded row's padding in; over its own frames a row gives what it gives
    unpadded, in any batch (equal to upstream's on unpadded rows: the released models' inference)."""
    norm = nn.GroupNorm(
        groups,
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=jnp.float32,
        use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name=name,
    )
    return lambda x, m: norm(x, mask=jnp.broadcast_to(m > 0, x.shape))


class LengthRegulator(nn.Module):
    """InterpolateRegulator's refinement after the interpolation: `stages` x (convolution,
    one-group GroupNorm, Mish), a pointwise convolution, over the frames of m (B, T, 1): each
    row's own, as it would be unpadded (upstream's convolutions and statistics read the padding;
    on unpadded rows the two are equal)."""

    stages: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, m):
        c = x.shape[-1]
        for i in range(self.stages):
            x = _conv(c, 3, f"model_{3 * i}", dtype=self.dtype)(x * m)
            x = mish(_group_norm(1, f"model_{3 * i + 1}", self.dtype)(x, m))
        return _conv(c, 1, f"model_{3 * self.stages}", dtype=self.dtype)(x) * m


class Block1D(nn.Module):
    """Matcha's Block1D: Mish(GroupNorm8(conv3(x m))) m; `causal`, CosyVoice 2's CausalBlock1D:
    the convolution over the frame and the two before, a LayerNorm over channels."""

    features: int
    dtype: jnp.dtype = jnp.float32
    causal: bool = False

    @nn.compact
    def __call__(self, x, m):
        if not self.causal:
            h = _conv(self.features, 3, "block_0", dtype=self.dtype, init=ESTIMATOR_INIT)(x * m)
            return mish(_group_norm(8, "block_1", self.dtype)(h, m)) * m
        h = _causal_conv(self.features, 3, "block_0", self.dtype)(x * m)
        return mish(LayerNorm(1e-5, dtype=self.dtype, name="block_2")(h)) * m


def _causal_conv(features, kernel, name, dtype):
    """CosyVoice 2's CausalConv1d: the frames padded on the left by kernel - 1."""
    return _conv(features, kernel, name, dtype=dtype, causal=True, init=ESTIMATOR_INIT)


class ResnetBlock1D(nn.Module):
    """Matcha's ResnetBlock1D: two Block1D with the time embedding (Mish, linear) added between,
    plus the pointwise convolution of the input."""

    features: int
    dtype: jnp.dtype = jnp.float32
    causal: bool = False

    @nn.compact
    def __call__(self, x, m, temb):
        h = Block1D(self.features, self.dtype, self.causal, name="block1")(x, m)
        mlp = Dense(self.features, ("mlp", "embed"), dtype=self.dtype, kernel_init=ESTIMATOR_INIT, name="mlp_1")
        h = h + mlp(mish(temb))[:, None]
        h = Block1D(self.features, self.dtype, self.causal, name="block2")(h, m)
        return h + _conv(self.features, 1, "res_conv", dtype=self.dtype, init=ESTIMATOR_INIT)(x * m)


class TransformerBlock(nn.Module):
    """Matcha's BasicTransformerBlock without cross-attention: x + attention(LN x) (q, k, v
    without bias; padded keys masked), x + FF(LN x) (exact GELU, 4x)."""

    heads: int
    head_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, valid, chunk=0):
        b, t, d = x.shape
        inner = self.heads * self.head_dim
        y = LayerNorm(1e-5, dtype=self.dtype, name="norm1")(x)
        split = lambda h: h.reshape(b, t, self.heads, self.head_dim)  # noqa: E731
        dense = functools.partial(Dense, dtype=self.dtype, kernel_init=ESTIMATOR_INIT)
        q, k, v = (split(dense(inner, ("embed", "heads"), use_bias=False, name=f"attn1_to_{n}")(y)) for n in "qkv")
        mask = valid[:, None, None, :] & chunk_mask(t, chunk)[None, None]
        attended = dot_product_attention(q, k, v, mask=mask).reshape(b, t, inner)
        x = x + dense(d, ("heads", "embed"), name="attn1_to_out_0")(attended)
        y = LayerNorm(1e-5, dtype=self.dtype, name="norm3")(x)
        y = gelu(dense(4 * d, ("embed", "mlp"), name="ff_net_0_proj")(y))
        return x + dense(d, ("mlp", "embed"), name="ff_net_2")(y)


class Upsample1D(nn.Module):
    """Matcha's Upsample1D: torch's ConvTranspose1d(kernel 4, stride 2, padding 1), twice the frames,
    its kernel initialised as torch's default (not a Conv1d, initialize_weights passes it by), with
    the fan in torch counts for a transposed convolution: out x kernel."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        init = nn.with_logical_partitioning(torch_uniform(4 * self.features), (None, "conv_in", "embed"))
        kernel = self.param("kernel", init, (4, x.shape[-1], self.features))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (self.features,))
        y = conv_transpose(x.astype(self.dtype), kernel.astype(self.dtype), 2)[:, 1:-1]
        return y + bias.astype(self.dtype)


class Stage(nn.Module):
    """A ResnetBlock1D and n_blocks Transformer blocks: one of the U-Net's down, mid or up
    blocks before its resampling."""

    features: int
    n_blocks: int
    heads: int
    head_dim: int
    dtype: jnp.dtype = jnp.float32
    causal: bool = False

    @nn.compact
    def __call__(self, x, m, temb, chunk=0):
        x = ResnetBlock1D(self.features, self.dtype, self.causal, name="resnet")(x, m, temb)
        for i in range(self.n_blocks):
            block = TransformerBlock(self.heads, self.head_dim, self.dtype, name=f"transformer_{i}")
            x = block(x, m[..., 0] > 0, chunk)
        return constrain(x, FRAMES)


class ConditionalDecoder(nn.Module):
    """The estimator (x, mask, mu, t, spks, cond) -> velocity (B, T, out_channels): x, mu, cond
    (B, T, C), mask (B, T), t (B,), spks (B, C). `causal`: CosyVoice 2's CausalConditionalDecoder
    (causal convolutions and LayerNorm blocks); with `streaming` (it may be traced) the attention
    stays within chunks of `chunk_size` frames."""

    out_channels: int
    channels: Sequence[int]
    n_blocks: int
    num_mid_blocks: int
    num_heads: int
    attention_head_dim: int
    dtype: jnp.dtype = jnp.float32
    remat: bool = False
    causal: bool = False
    chunk_size: int = 0

    def time_embedding(self, t, width):
        """SinusoidalPosEmb (scale 1000, sin then cos) of `width`, then TimestepEmbedding."""
        half = width // 2
        frequencies = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(10000.0) / (half - 1)))
        angles = 1000.0 * t.astype(jnp.float32)[:, None] * frequencies
        temb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], -1).astype(self.dtype)
        width = 4 * self.channels[0]
        dense = functools.partial(Dense, dtype=self.dtype, kernel_init=ESTIMATOR_INIT)
        temb = jax.nn.silu(dense(width, ("embed", "mlp"), name="time_mlp_linear_1")(temb))
        return dense(width, ("mlp", "embed"), name="time_mlp_linear_2")(temb)

    @nn.compact
    def __call__(self, x, mask, mu, t, spks, cond, streaming=False):
        spks = jnp.broadcast_to(spks[:, None], x.shape[:2] + spks.shape[-1:])
        x = jnp.concatenate([x, mu, spks, cond], axis=-1).astype(self.dtype)
        temb = self.time_embedding(t, x.shape[-1])
        chunk = jnp.where(streaming, self.chunk_size, 0) if self.chunk_size else 0
        stage = lambda features, name, module=Stage: module(  # noqa: E731
            features, self.n_blocks, self.num_heads, self.attention_head_dim, self.dtype, self.causal, name=name
        )
        last_conv = lambda features, name: (  # noqa: E731
            _causal_conv(features, 3, name, self.dtype)
            if self.causal
            else _conv(features, 3, name, dtype=self.dtype, init=ESTIMATOR_INIT)
        )
        masks, skips = [mask[..., None].astype(self.dtype)], []
        last = len(self.channels) - 1
        for i, features in enumerate(self.channels):
            m = masks[-1]
            x = stage(features, f"down_blocks_{i}")(x, m, temb, chunk)
            skips.append(x)
            if i < last:  # Downsample1D, and the mask of every other frame
                down = _conv(features, 3, f"down_blocks_{i}_2_conv", stride=2, dtype=self.dtype, init=ESTIMATOR_INIT)
                x = down(x * m)
                masks.append(m[:, ::2])
            else:
                x = last_conv(features, f"down_blocks_{i}_2")(x * m)
        mid = nn.remat(Stage) if self.remat else Stage
        # In a loop XLA:CPU lays out the convolutions' kernel gradients for its naive emitter,
        # not its library's: there the blocks are unrolled (2.6x faster step, docs/cosyvoice.md).
        mid = repeated(mid, self.num_mid_blocks, self.num_mid_blocks if jax.default_backend() == "cpu" else 1)
        x, _ = stage(self.channels[-1], "mid_blocks", mid)(x, masks[-1], temb, chunk)
        for i, features in enumerate(reversed(self.channels)):
            m, skip = masks.pop(), skips.pop()
            x = jnp.concatenate([x[:, : skip.shape[1]], skip], axis=-1)
            x = stage(features, f"up_blocks_{i}")(x, m, temb, chunk)
            if i < last:
                x = Upsample1D(features, self.dtype, name=f"up_blocks_{i}_2_conv")(x * m)
            else:
                x = last_conv(features, f"up_blocks_{i}_2")(x * m)
        x = Block1D(self.channels[0], self.dtype, self.causal, name="final_block")(x, m)
        final = _conv(self.out_channels, 1, "final_proj", dtype=self.dtype, init=ESTIMATOR_INIT)
        return (final(x * m) * m).astype(jnp.float32)


class ConvPositionEmbedding(nn.Module):
    """F5-TTS's convolutional position embedding: two grouped convolutions (kernel 31, 16
    groups) over the valid frames, each followed by Mish."""

    kernel: int = 31
    groups: int = 16
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, m):
        d, k = x.shape[-1], self.kernel
        for i in range(2):
            init = nn.with_logical_partitioning(default_kernel_init, (None, None, "embed"))
            kernel = self.param(f"conv_{i}_kernel", init, (k, d // self.groups, d))
            bias = self.param(f"conv_{i}_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (d,))
            x = grouped_conv(
                (x * m).astype(self.dtype),
                kernel.astype(self.dtype),
                (1,),
                [(k // 2, k // 2)],
                self.groups,
                ("NWC", "WIO", "NWC"),
            )
            x = mish(x + bias.astype(self.dtype))
        return x * m


class DiTEstimator(nn.Module):
    """The estimator as a Diffusion Transformer (CosyVoice 3's and F5-TTS's kind) on
    jaxmodels.dit's adaLN-Zero blocks: [x, cond, mu, spks] projected to the width, the
    convolutional position embedding added, the blocks conditioned on the time embedding (t
    scaled by 1000) with attention over each row's valid frames (the mask is a prefix), and
    DiT's adaLN final layer. Zero-initialised as DiT's: the velocity starts at 0."""

    out_channels: int
    hidden_size: int
    depth: int
    num_heads: int
    mlp_ratio: float
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x, mask, mu, t, spks, cond):
        m = mask[..., None].astype(self.dtype)
        spks = jnp.broadcast_to(spks[:, None], x.shape[:2] + spks.shape[-1:])
        h = jnp.concatenate([x, cond, mu, spks], axis=-1).astype(self.dtype)
        h = Dense(self.hidden_size, ("mlp", "embed"), dtype=self.dtype, name="input_proj")(h)
        h = h + ConvPositionEmbedding(dtype=self.dtype, name="conv_pos_embed")(h, m)
        c = TimestepEmbedder(self.hidden_size, dtype=self.dtype, name="time_embed")(1000.0 * t)
        lengths = jnp.sum(mask > 0, axis=1).astype(jnp.int32)
        blocks = stacked_blocks(self.depth, self.remat)
        h, _ = blocks(self.hidden_size, self.num_heads, self.mlp_ratio, self.dtype, name="blocks")(h, c, lengths)
        out = FinalLayer(self.hidden_size, 1, self.out_channels, self.dtype, name="final_layer")(h, c)
        return (out * m).astype(jnp.float32)


class Flow(nn.Module):
    """MaskedDiffWithXvec: `encode` tokens to the mel-rate mean, `loss` trains the estimator
    on it, `inference` continues a prompt."""

    config: FlowConfig
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    def setup(self):
        c = self.config
        self.input_embedding = Embed(c.vocab_size, c.input_size, dtype=self.dtype)
        self.spk_embed_affine_layer = Dense(c.output_size, ("mlp", "embed"), dtype=self.dtype)
        if c.token_mel_ratio:
            self.encoder = UpsampleConformerEncoder(
                c.input_size,
                c.attention_heads,
                c.linear_units,
                c.num_blocks,
                c.up_blocks,
                c.pre_lookahead_len,
                c.token_mel_ratio,
                dtype=self.dtype,
                remat=self.remat,
            )
        else:
            self.encoder = ConformerEncoder(
                c.input_size, c.attention_heads, c.linear_units, c.num_blocks, dtype=self.dtype, remat=self.remat
            )
            self.length_regulator = LengthRegulator(c.regulator_stages, self.dtype)
        self.encoder_proj = Dense(c.output_size, ("embed", "mlp"), dtype=self.dtype)
        if c.estimator == "unet":
            self.estimator = ConditionalDecoder(
                c.output_size,
                tuple(c.channels),
                c.n_blocks,
                c.num_mid_blocks,
                c.num_heads,
                c.attention_head_dim,
                self.dtype,
                self.remat,
                c.causal,
                c.chunk_size * max(c.token_mel_ratio, 1),
            )
        elif c.estimator == "dit":
            self.estimator = DiTEstimator(
                c.output_size, c.dit_hidden, c.dit_depth, c.dit_heads, c.dit_mlp_ratio, self.dtype, self.remat
            )
        else:
            raise ValueError(f"flow estimator {c.estimator!r}: 'unet' or 'dit'")

    def speaker(self, embedding):
        """The x-vector (B, spk_embed_dim) at unit length, projected to (B, output_size)."""
        norm = jnp.linalg.norm(embedding.astype(jnp.float32), axis=-1, keepdims=True)
        return self.spk_embed_affine_layer(embedding / jnp.maximum(norm, 1e-12)).astype(jnp.float32)

    def encode(self, tokens, token_len, streaming=False):
        """Tokens (B, L) -> the mean (B, L, output_size) at the token rate, or with the upsampling
        encoder at the mel rate (B, token_mel_ratio L, output_size); `streaming` (CosyVoice 2's
        training, it may be traced): attention within chunks."""
        valid = jnp.arange(tokens.shape[1])[None] < token_len[:, None]
        x = self.input_embedding(jnp.maximum(tokens, 0)) * valid[..., None]
        if not self.config.token_mel_ratio:
            return self.encoder_proj(self.encoder(x, valid))
        chunk = jnp.where(streaming, self.config.chunk_size, 0) if self.config.chunk_size else 0
        return self.encoder_proj(self.encoder(x, valid, chunk))

    def regulate(self, h, frames, mask):
        """The token-rate mean (B, L, C) interpolated to `frames` frames and refined over the
        frames of `mask` (B, frames), zero elsewhere."""
        return self.length_regulator(interpolate(h, frames), mask[..., None].astype(h.dtype))

    def scored_frames(self, token_len, feat_len):
        """(B,) the frames the loss scores: the mel's own (MaskedDiffWithXvec), or the upsampling
        encoder's (CausalMaskedDiffWithXvec: token_mel_ratio per token)."""
        return token_len * self.config.token_mel_ratio if self.config.token_mel_ratio else feat_len

    def _training_conditions(self, rng, tokens, token_len, feat, feat_len):
        """(mask (B, T), mu (B, T, C), the estimator, the normalised mel) of a training batch."""
        frames = feat.shape[1]
        mask = (jnp.arange(frames)[None] < self.scored_frames(token_len, feat_len)[:, None]).astype(jnp.float32)
        estimator = self.estimator
        if self.config.token_mel_ratio:
            made = self.config.mel_frames(tokens.shape[1])
            if frames != made:
                raise ValueError(f"{frames} mel frames for {tokens.shape[1]} tokens; the encoder makes {made}")
            streaming = jax.random.uniform(rng) < 0.5
            mu = self.encode(tokens, token_len, streaming) * mask[..., None]
            estimator = lambda *a: self.estimator(*a, streaming=streaming)  # noqa: E731
        else:
            mu = self.regulate(self.encode(tokens, token_len), frames, mask)
        return mask, mu, estimator, (feat - self.config.mel_mean) / self.config.mel_std

    def row_errors(self, rng, tokens, token_len, feat, feat_len, embedding):
        """Per row (B,), the forward pass's flow-matching errors of the mel `feat` (B, T, C)
        (fm.cfm_errors) and the prior's (mu's squared error): MaskedDiffWithXvec's, the regulated
        mean interpolated to T (upstream's: the batch padded to its longest), or
        CausalMaskedDiffWithXvec's, the upsampling encoder's frames (T must be token_mel_ratio x
        the tokens' padded length), half the batches streaming (attention within chunks); half the
        rows see a prompt, their first U[0, 0.3 length] frames. Both are of the mel normalised by
        config.mel_mean and mel_std."""
        k_prompt, k_span, k_flow, k_stream = jax.random.split(rng, 4)
        mask, mu, estimator, feat = self._training_conditions(k_stream, tokens, token_len, feat, feat_len)
        prior = jnp.sum(jnp.square(mu - feat) * mask[..., None], axis=(1, 2))
        span = jax.random.randint(k_span, feat_len.shape, 0, (0.3 * feat_len).astype(jnp.int32) + 1)
        span = jnp.where(jax.random.uniform(k_prompt, feat_len.shape) < 0.5, 0, span)
        cond = jnp.where(jnp.arange(feat.shape[1])[None, :, None] < span[:, None, None], feat, 0.0)
        errors = fm.cfm_errors(estimator, k_flow, feat, mask, mu, self.speaker(embedding), cond, self.config.cfm)
        return errors, prior

    def noise_response(self, rng, tokens, token_len, feat, feat_len, embedding):
        """Per row, (sum of v z, sum of z^2) over the scored frames, v the estimator's velocity at
        t = 0 from noise z (no prompt): their ratio is v's least-squares slope on z, -1 for the
        straight path's velocity x1 - z, 0 where the estimator ignores its noisy input (whose
        samples then keep their starting noise)."""
        k_noise, k_stream = jax.random.split(rng)
        mask, mu, estimator, feat = self._training_conditions(k_stream, tokens, token_len, feat, feat_len)
        z = jax.random.normal(k_noise, feat.shape, feat.dtype)
        v = estimator(z, mask, mu, jnp.zeros(feat.shape[:1]), self.speaker(embedding), jnp.zeros_like(feat))
        m = mask[..., None]
        return jnp.sum(v * z * m, axis=(1, 2)), jnp.sum(z * z * m, axis=(1, 2))

    def losses(self, rng, tokens, token_len, feat, feat_len, embedding):
        """(the training loss, the flow-matching loss, the prior loss): `row_errors` over the batch's
        (scored frames x mel bins), as upstream's, plus config.prior_loss_weight times half the
        prior's squared error over the same."""
        errors, prior = self.row_errors(rng, tokens, token_len, feat, feat_len, embedding)
        scored = jnp.sum(jnp.minimum(self.scored_frames(token_len, feat_len), feat.shape[1]))
        values = jnp.maximum(scored, 1) * feat.shape[-1]
        flow_loss, prior_loss = jnp.sum(errors) / values, 0.5 * jnp.sum(prior) / values
        return flow_loss + self.config.prior_loss_weight * prior_loss, flow_loss, prior_loss

    def loss(self, rng, tokens, token_len, feat, feat_len, embedding):
        """The training loss (`losses`)."""
        return self.losses(rng, tokens, token_len, feat, feat_len, embedding)[0]

    def conditions(self, tokens, prompt_tokens, prompt_feat, embedding):
        """The estimator's conditions (mu, mask, spks, cond) over the prompt's mel frames (B, M1)
        and the config.mel_frames(L) frames of `tokens` (B, L) after the prompt's tokens (B, L1)
        (either part may be empty; every row its whole length). The target's first and last 20
        tokens are interpolated to the frames of 20 tokens each, as upstream does for
        streaming's sake."""
        c = self.config
        prompt_len, length = prompt_tokens.shape[1], tokens.shape[1]
        all_tokens = jnp.concatenate([prompt_tokens, tokens], axis=1).astype(jnp.int32)
        h = self.encode(all_tokens, jnp.full(all_tokens.shape[:1], all_tokens.shape[1]))
        if c.token_mel_ratio:  # CausalMaskedDiffWithXvec: the encoder's frames, the prompt's mel first
            frames = h.shape[1] - prompt_feat.shape[1]
            cond = jnp.concatenate([prompt_feat, jnp.zeros((h.shape[0], frames, h.shape[2]), h.dtype)], axis=1)
            mask = jnp.ones(h.shape[:2], jnp.float32)
            return h.astype(jnp.float32), mask, self.speaker(embedding), cond.astype(jnp.float32)
        head, target = h[:, :prompt_len], h[:, prompt_len:]
        frames, edge = c.mel_frames(length), c.mel_frames(20)
        if length > 40:
            pieces = [
                interpolate(target[:, :20], edge),
                interpolate(target[:, 20:-20], frames - 2 * edge),
                interpolate(target[:, -20:], edge),
            ]
        else:
            pieces = [interpolate(target, frames)]
        mu = jnp.concatenate([interpolate(head, prompt_feat.shape[1]), *pieces], axis=1)
        mu = self.length_regulator(mu, jnp.ones(mu.shape[:2] + (1,), mu.dtype))
        cond = jnp.concatenate([prompt_feat, jnp.zeros((mu.shape[0], frames, mu.shape[2]), mu.dtype)], axis=1)
        mask = jnp.ones(mu.shape[:2], jnp.float32)
        return mu.astype(jnp.float32), mask, self.speaker(embedding), cond.astype(jnp.float32)

    def inference(self, rng, tokens, prompt_tokens, prompt_feat, embedding, temperature: float = 1.0):
        """MaskedDiffWithXvec.inference: the mel frames (B, config.mel_frames(L), C) of `tokens`
        continuing the prompt (see `conditions`), sampled with config.cfm's guided Euler steps
        from config.start_time."""
        c = self.config
        mu, mask, spks, cond = self.conditions(
            tokens, prompt_tokens, (prompt_feat - c.mel_mean) / c.mel_std, embedding
        )
        mel = fm.sample(self.estimator, rng, mu, mask, spks, cond, c.cfm, temperature, c.start_time)
        return mel[:, prompt_feat.shape[1] :] * c.mel_std + c.mel_mean

    def __call__(self, tokens, token_len, feat, feat_len, embedding):
        """The training loss with fixed randomness (for init)."""
        return self.loss(jax.random.key(0), tokens, token_len, feat, feat_len, embedding)


def config(name: str, **overrides) -> FlowConfig:
    """A named configuration, fields overridden; an unknown name or field is an error listing the valid ones."""
    return named_config(CONFIGS, name, "flow", **overrides)


def example_inputs(cfg: FlowConfig, batch: int = 1, tokens: int = 8):
    frames = cfg.mel_frames(tokens)
    return (
        jnp.zeros((batch, tokens), jnp.int32),
        jnp.full((batch,), tokens),
        jnp.zeros((batch, frames, cfg.output_size)),
        jnp.full((batch,), frames),
        jnp.ones((batch, cfg.spk_embed_dim)),
    )


def init_shapes(cfg: FlowConfig):
    return jax.eval_shape(lambda: Flow(cfg).init(jax.random.key(0), *example_inputs(cfg)))["params"]


def param_count(cfg: FlowConfig) -> int:
    return variants.param_count(Flow(cfg), *example_inputs(cfg))


# The stacked modules: upstream's module list, the stack's Flax path, the config field of its length.
_STACKED = (
    ("encoder.encoders.", ("encoder", "encoders"), "num_blocks"),
    ("encoder.up_encoders.", ("encoder", "up_encoders"), "up_blocks"),  # CosyVoice 2's
    ("decoder.estimator.mid_blocks.", ("estimator", "mid_blocks"), "num_mid_blocks"),
)


def _mid_block_path(key: str, value: np.ndarray):
    module, _, leaf = key.rpartition(".")
    path = _stage_path(module)
    name, value = _leaf(path, leaf, value)
    return (*path, name), value


def _stage_path(rest: str) -> tuple[str, ...]:
    """A down/mid/up block's "0.block1.block.0" / "1.2.attn1.to_q" -> its Flax module path."""
    part, _, rest = rest.partition(".")
    if part == "0":
        return ("resnet", *module_path(f"{rest}.leaf")[0])
    index, _, rest = rest.partition(".")
    return (f"transformer_{index}", rest.replace(".", "_"))


def _module_path(module: str) -> tuple[str, ...]:
    """An unstacked upstream module name -> its Flax path."""
    if module.startswith("decoder.estimator."):
        module = module.removeprefix("decoder.estimator.")
        m = re.match(r"^(down|up)_blocks\.(\d+)\.(0|1\.\d+)\.(.+)$", module)
        if m:
            return ("estimator", f"{m[1]}_blocks_{m[2]}", *_stage_path(f"{m[3]}.{m[4]}"))
        if module.startswith("final_block."):
            return ("estimator", *module_path(f"{module}.leaf")[0])
        return ("estimator", module.replace(".", "_"))
    if module.startswith("encoder."):
        return ("encoder", module.removeprefix("encoder.").replace(".", "_"))
    if module.startswith("length_regulator."):
        return ("length_regulator", module.removeprefix("length_regulator.").replace(".", "_"))
    return (module.replace(".", "_"),)


def _leaf(module_path: tuple[str, ...], leaf: str, value: np.ndarray):
    """(Flax leaf name, value in Flax layout)."""
    if leaf == "bias":
        return "bias", value
    if module_path[-1] == "input_embedding":
        return "embedding", value
    if value.ndim == 1:
        return "scale", value
    if value.ndim == 2:
        return "kernel", value.T
    if module_path[-1].startswith("up_blocks_") and module_path[-1].endswith("_2_conv"):
        return "kernel", value.transpose(2, 0, 1)  # ConvTranspose1d (in, out, k) -> (k, in, out)
    return "kernel", value.transpose(2, 1, 0)  # Conv1d (out, in, k) -> (k, in, out)


def _flax_path(key: str, value: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    module, _, leaf = key.rpartition(".")
    path = _module_path(module)
    name, value = _leaf(path, leaf, value)
    return (*path, name), value


def from_torch(state_dict, cfg: FlowConfig):
    """{"params": ...} of a Flow from MaskedDiffWithXvec's or CausalMaskedDiffWithXvec's
    state_dict (a released flow.pt: CosyVoice-300M's, CosyVoice 2's); the
    encoder layers and mid blocks stacked. A key, layer or shape that does not fit is an error
    listing them."""
    converted, paths, stacks = {}, {}, {}
    for key, value in state_dict.items():
        value = np.asarray(value)
        for (modules, prefix, length), path_in_layer in zip(_STACKED, (layer_path, layer_path, _mid_block_path)):
            if key.startswith(modules):
                index, _, rest = key.removeprefix(modules).partition(".")
                path, value = path_in_layer(rest, value)
                stack = stacks.setdefault(f"{modules}*.{rest}", ((*prefix, *path), getattr(cfg, length), {}))
                stack[2][int(index)] = value
                break
        else:
            paths[key], converted[key] = _flax_path(key, value)
    for key, (path, length, by_index) in stacks.items():
        converted[key], paths[key] = stack_layers(key, by_index, length), path
    params = assign_state_dict(converted, nn.unbox(init_shapes(cfg)), lambda key, value: (paths[key], value))
    return {"params": params}


def load(path: str, name: str = "flow_cosyvoice_300m"):
    """(model, variables) of a released flow.pt (or .safetensors) of the named configuration."""
    cfg = config(name)
    return Flow(cfg), from_torch(load_state_dict(path), cfg)
