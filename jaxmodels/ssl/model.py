"""wav2vec 2.0 and HuBERT encoders (the models of `transformers.Wav2Vec2Model` and
`HubertModel`), on raw 16 kHz waveforms, channels-last.

The convolutional feature encoder (7 layers: a group norm over time on the first in the
"group" mode of the Base models, a layer norm after every one in the "layer" mode of the
Large ones), the feature projection, a convolutional relative position embedding
(weight-normalised, grouped, "same" length), and a Transformer encoder, post-LN (Base)
or pre-LN ("stable layer norm", Large), its layers scanned. Module names are
transformers'; padded frames are zeroed before the position convolution and never
attended to, as there. Dropout (hidden, attention, activation, after the feature
projection) and layer drop (a layer skipped with probability ``layerdrop``) act as
transformers' in training: when the call is given a "dropout" rng.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.nn import Dense, LayerNorm, constrain, gelu
from jaxmodels.nn.attention import dot_product_attention
from jaxmodels.nn.layers import grouped_conv

Dtype = Any
FRAMES = ("batch", None, "act_embed")


def dropout(module: nn.Module, rate: float, x):
    """Inverted dropout of x at ``rate`` when ``module`` was given a "dropout" rng (training)."""
    if rate == 0.0 or not module.has_rng("dropout"):
        return x
    keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def output_lengths(lengths, kernels, strides):
    """Frames of the feature encoder for inputs of these lengths (transformers' formula)."""
    for k, s in zip(kernels, strides):
        lengths = (lengths - k) // s + 1
    return lengths


class ChannelNorm(nn.Module):
    """GroupNorm(C, C) of the "group" mode: each channel normalised over time, over the
    frames `valid` marks (all frames where it is None, as transformers does)."""

    eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, valid=None):
        c = x.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (c,))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (c,))
        h = x.astype(jnp.float32)
        w = jnp.ones(h.shape[:2] + (1,)) if valid is None else valid[..., None].astype(jnp.float32)
        n = jnp.maximum(w.sum(1, keepdims=True), 1.0)
        mean = (h * w).sum(1, keepdims=True) / n
        var = (jnp.square(h - mean) * w).sum(1, keepdims=True) / n
        return ((h - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias).astype(self.dtype)


class FeatureEncoder(nn.Module):
    conv_dim: tuple
    conv_kernel: tuple
    conv_stride: tuple
    conv_bias: bool
    feat_extract_norm: str  # "group" or "layer"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, audio, lengths=None):
        """Frames of (B, T) audio; with `lengths`, the "group" mode's norm over each row's own frames."""
        x = audio[..., None].astype(self.dtype)
        for i, (dim, k, s) in enumerate(zip(self.conv_dim, self.conv_kernel, self.conv_stride)):
            layer = f"conv_layers_{i}"
            x = nn.Conv(
                dim,
                (k,),
                (s,),
                "VALID",
                use_bias=self.conv_bias,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, "conv_in", "embed")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                name=f"{layer}_conv",
            )(x)
            if self.feat_extract_norm == "layer":
                x = LayerNorm(1e-5, dtype=self.dtype, name=f"{layer}_layer_norm")(x)
            elif i == 0:
                valid = None
                if lengths is not None:
                    valid = jnp.arange(x.shape[1])[None] < output_lengths(lengths, (k,), (s,))[:, None]
                x = ChannelNorm(dtype=self.dtype, name=f"{layer}_layer_norm")(x, valid)
            x = gelu(x)
        return x


class PositionalConvEmbedding(nn.Module):
    """Grouped convolution over time with a weight-normalised kernel (g * v / |v|, the norm
    over the input and output channels of each tap); an even kernel's extra frame dropped."""

    kernel_size: int
    groups: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d, k = x.shape[-1], self.kernel_size
        v = self.param(
            "weight_v",
            nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, None, "embed")),
            (k, d // self.groups, d),
        )
        g = self.param("weight_g", nn.with_logical_partitioning(nn.initializers.ones, (None,)), (k,))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (d,))
        kernel = g[:, None, None] * v / jnp.sqrt(jnp.sum(v * v, axis=(1, 2), keepdims=True))
        y = grouped_conv(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            (1,),
            ((k // 2, k // 2),),
            self.groups,
            ("NWC", "WIO", "NWC"),
        )
        y = y + bias.astype(self.dtype)
        return gelu(y[:, : x.shape[1]])


class EncoderLayer(nn.Module):
    """Self-attention and a GELU feed-forward, post-LN or pre-LN (stable); in training, dropout
    and, with probability ``layerdrop``, the whole layer skipped (its input passed on)."""

    num_heads: int
    intermediate_size: int
    stable: bool
    eps: float
    dtype: Dtype = jnp.float32
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    layerdrop: float = 0.0

    @nn.compact
    def __call__(self, x, valid):
        inputs = x
        d = x.shape[-1]
        head = d // self.num_heads
        dense = lambda n, axes, name: Dense(n, axes, dtype=self.dtype, name=name)  # noqa: E731
        residual = x
        h = LayerNorm(self.eps, dtype=self.dtype, name="layer_norm")(x) if self.stable else x
        b, t = h.shape[:2]
        q, k, v = (
            dense(d, ("embed", "heads"), f"attention_{n}")(h).reshape(b, t, self.num_heads, head)
            for n in ("q_proj", "k_proj", "v_proj")
        )
        attended = self.attend(q, k, v, valid).reshape(b, t, d)
        x = residual + dropout(self, self.hidden_dropout, dense(d, ("heads", "embed"), "attention_out_proj")(attended))
        if not self.stable:
            x = LayerNorm(self.eps, dtype=self.dtype, name="layer_norm")(x)
        h = LayerNorm(self.eps, dtype=self.dtype, name="final_layer_norm")(x) if self.stable else x
        h = gelu(dense(self.intermediate_size, ("embed", "mlp"), "feed_forward_intermediate_dense")(h))
        h = dropout(self, self.activation_dropout, h)
        x = x + dropout(self, self.hidden_dropout, dense(d, ("mlp", "embed"), "feed_forward_output_dense")(h))
        if not self.stable:
            x = LayerNorm(self.eps, dtype=self.dtype, name="final_layer_norm")(x)
        if self.layerdrop > 0.0 and self.has_rng("dropout"):
            x = jnp.where(jax.random.uniform(self.make_rng("dropout")) < self.layerdrop, inputs, x)
        x = constrain(x, FRAMES)
        return x, x

    def attend(self, q, k, v, valid):
        """Attention over the valid keys; in training with attention dropout, on the probabilities."""
        if self.attention_dropout == 0.0 or not self.has_rng("dropout"):
            return dot_product_attention(q, k, v, mask=valid[:, None, None, :])
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
        scores = jnp.where(valid[:, None, None, :], scores.astype(jnp.float32), -1e30)
        probs = dropout(self, self.attention_dropout, jax.nn.softmax(scores, axis=-1).astype(v.dtype))
        return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


class SSLEncoder(nn.Module):
    """Waveforms (B, T) -> frames (B, T', hidden_size) at 50 Hz; arguments as transformers' configs."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    conv_dim: tuple = (512,) * 7
    conv_kernel: tuple = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"
    feat_proj_layer_norm: bool = True  # HuBERT's option; wav2vec 2.0 always has it
    do_stable_layer_norm: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5
    # Training regularisation (transformers' names; 0: none): dropout on the hidden states, the
    # attention probabilities, the feed-forward's activations and the projected features, and
    # the probability that a layer is skipped
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    feat_proj_dropout: float = 0.0
    layerdrop: float = 0.0
    # Padded rows as each utterance alone: the "group" mode's norm over its own frames. Off,
    # as transformers: over the padded length (so a Base model's padded row differs).
    norm_valid_frames: bool = False
    dtype: Dtype = jnp.float32
    remat: bool = False

    def setup(self):
        self.feature_extractor = FeatureEncoder(
            self.conv_dim, self.conv_kernel, self.conv_stride, self.conv_bias, self.feat_extract_norm, self.dtype
        )
        if self.feat_proj_layer_norm:
            self.feature_projection_layer_norm = LayerNorm(self.layer_norm_eps, dtype=self.dtype)
        self.feature_projection_projection = Dense(self.hidden_size, ("conv_in", "embed"), dtype=self.dtype)
        self.masked_spec_embed = self.param(
            "masked_spec_embed",
            nn.with_logical_partitioning(nn.initializers.uniform(), ("embed",)),
            (self.hidden_size,),
        )
        self.encoder_pos_conv_embed = PositionalConvEmbedding(
            self.num_conv_pos_embeddings, self.num_conv_pos_embedding_groups, self.dtype
        )
        self.encoder_layer_norm = LayerNorm(self.layer_norm_eps, dtype=self.dtype)
        layer = nn.remat(EncoderLayer) if self.remat else EncoderLayer
        self.encoder_layers = nn.scan(
            layer,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=nn.broadcast,
            length=self.num_hidden_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(
            self.num_attention_heads,
            self.intermediate_size,
            self.do_stable_layer_norm,
            self.layer_norm_eps,
            self.dtype,
            self.hidden_dropout,
            self.attention_dropout,
            self.activation_dropout,
            self.layerdrop,
        )

    def extract(self, audio, paddings=None):
        """(features (B, T', C), valid (B, T')): the convolutional feature encoder's output."""
        lengths = None if paddings is None else jnp.sum(paddings == 0, axis=1)
        if paddings is not None:
            audio = jnp.where(paddings > 0, 0.0, audio)
        features = self.feature_extractor(audio, lengths if self.norm_valid_frames else None)
        if paddings is None:
            return features, jnp.ones(features.shape[:2], bool)
        frames = output_lengths(lengths, self.conv_kernel, self.conv_stride)
        return features, jnp.arange(features.shape[1])[None] < frames[:, None]

    def feature_norm(self, features):
        """The projection's layer norm where the model has it (transformers' extract_features:
        the quantizer's input)."""
        return self.feature_projection_layer_norm(features) if self.feat_proj_layer_norm else features

    def encode(self, features, valid, mask=None):
        """transformers' hidden_states from feature_norm's features: the projected features (padded
        frames zeroed, the frames `mask` (B, T') marks replaced by the learned masked_spec_embed)
        after the position embedding (and, post-LN, the encoder's layer norm), then each layer's
        output (pre-LN: before the final norm)."""
        x = dropout(self, self.feat_proj_dropout, self.feature_projection_projection(features))
        if mask is not None:
            x = jnp.where(mask[..., None], self.masked_spec_embed.astype(x.dtype), x)
        x = jnp.where(valid[..., None], x, 0.0)
        x = x + self.encoder_pos_conv_embed(x)
        if not self.do_stable_layer_norm:
            x = self.encoder_layer_norm(x)
        x = constrain(dropout(self, self.hidden_dropout, x), FRAMES)
        _, outputs = self.encoder_layers(x, valid)
        return [x, *outputs]

    def last(self, hidden_states):
        """The last hidden state of encode's list (pre-LN: after the final norm)."""
        if self.do_stable_layer_norm:
            return self.encoder_layer_norm(hidden_states[-1])
        return hidden_states[-1]

    def hidden_states(self, audio, paddings=None, mask=None):
        """transformers' hidden_states of (B, T) waveforms, `paddings` 1 at padding (see encode)."""
        features, valid = self.extract(audio, paddings)
        return self.encode(self.feature_norm(features), valid, mask)

    def __call__(self, audio, paddings=None, mask=None):
        """The last hidden state (B, T', D)."""
        return self.last(self.hidden_states(audio, paddings, mask))


class SSLForCTC(nn.Module):
    """transformers' HubertForCTC / Wav2Vec2ForCTC: the encoder's last hidden state, dropout
    (final_dropout, in training) and lm_head over the vocabulary. Returns (logits (B, T', V),
    valid frames per row (B,))."""

    encoder: SSLEncoder
    vocab_size: int
    final_dropout: float = 0.1

    def hidden_states(self, audio, paddings=None, mask=None):
        return self.encoder.hidden_states(audio, paddings, mask)

    @nn.compact
    def __call__(self, audio, paddings=None, mask=None, deterministic: bool = True):
        features, valid = self.encoder.extract(audio, paddings)
        last = self.encoder.last(self.encoder.encode(self.encoder.feature_norm(features), valid, mask))
        last = nn.Dropout(self.final_dropout)(last, deterministic=deterministic)
        logits = Dense(self.vocab_size, ("embed", "vocab"), dtype=self.encoder.dtype, name="lm_head")(last)
        return logits, valid.sum(1)


def span_mask(key, lengths, frames: int, mask_prob: float, mask_length: int, min_masks: int = 0):
    """(B, frames) bool: spans of mask_length frames over each row's first `lengths` frames,
    as fairseq's compute_mask_indices (transformers' port): int(mask_prob * length /
    mask_length + u) spans per row (u uniform, one per batch; at least min_masks), their
    starts drawn without replacement from [0, length - mask_length]; spans may overlap."""
    k_round, k_starts = jax.random.split(key)
    num = jnp.floor(mask_prob * lengths / mask_length + jax.random.uniform(k_round)).astype(jnp.int32)
    num = jnp.maximum(num, min_masks)
    num = jnp.minimum(num, frames // mask_length)
    num = jnp.minimum(num, jnp.maximum(lengths - (mask_length - 1), 0))
    positions = jnp.arange(frames)[None]
    scores = jax.random.uniform(k_starts, (lengths.shape[0], frames))
    scores = jnp.where(positions <= (lengths - mask_length)[:, None], scores, 2.0)
    rank = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)
    starts = (rank < num[:, None]).astype(jnp.int32)
    covered = jnp.cumsum(starts, axis=1)  # a frame is masked when a span starts within mask_length before it
    before = jnp.pad(covered, ((0, 0), (mask_length, 0)))[:, :frames]
    return covered - before > 0


@jax.custom_vjp
def scale_gradient(x, scale):
    """x, its gradient times `scale` (fairseq's GradMultiply: feature_grad_mult)."""
    return x


scale_gradient.defvjp(lambda x, s: (x, s), lambda s, g: (g * s, None))


def pretraining_features(encoder: SSLEncoder, audio, paddings, feature_grad_mult: float):
    """(features after feature_norm, valid, penalty) for pretraining, as fairseq: the gradient
    into the convolutional encoder scaled by feature_grad_mult, the penalty the mean square of
    its output over the valid frames."""
    features, valid = encoder.extract(audio, paddings)
    features = scale_gradient(features, feature_grad_mult)
    w = valid[..., None].astype(jnp.float32)
    penalty = (jnp.square(features.astype(jnp.float32)) * w).sum() / jnp.maximum(w.sum() * features.shape[-1], 1.0)
    return encoder.feature_norm(features), valid, penalty


class HubertPretraining(nn.Module):
    """HuBERT's masked prediction (fairseq's HubertModel): the encoder reads the audio with the
    masked frames replaced, final_proj maps its output to final_dim, and each frame's logits
    over the k-means classes are the cosine similarities to their embeddings / logit_temp.
    Returns (logits, the features penalty)."""

    encoder: SSLEncoder
    num_classes: int
    final_dim: int = 256
    logit_temp: float = 0.1
    feature_grad_mult: float = 0.1

    @nn.compact
    def __call__(self, audio, paddings=None, mask=None):
        features, valid, penalty = pretraining_features(self.encoder, audio, paddings, self.feature_grad_mult)
        x = self.encoder.last(self.encoder.encode(features, valid, mask))
        projected = Dense(self.final_dim, ("embed", "mlp"), dtype=self.encoder.dtype, name="final_proj")(x)
        labels = self.param(
            "label_embs_concat",
            nn.with_logical_partitioning(nn.initializers.uniform(), ("vocab", None)),
            (self.num_classes, self.final_dim),
        )
        unit = lambda v: v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-8)  # noqa: E731
        return unit(projected.astype(jnp.float32)) @ unit(labels).T / self.logit_temp, penalty


def hubert_loss(logits, targets, mask, valid, masked_weight: float = 1.0, unmasked_weight: float = 0.0):
    """(loss, {"masked_accuracy", "masked_loss", "unmasked_loss"}): cross-entropy of the frames'
    k-means targets, averaged over the masked and over the unmasked valid frames, weighted as
    HuBERT's pred_masked_weight and pred_nomask_weight (Base: 1 and 0)."""
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]
    masked, unmasked = (mask & valid).astype(jnp.float32), (~mask & valid).astype(jnp.float32)
    mean = lambda v, w: (v * w).sum() / jnp.maximum(w.sum(), 1.0)  # noqa: E731
    masked_loss, unmasked_loss = mean(ce, masked), mean(ce, unmasked)
    accuracy = mean((logits.argmax(-1) == targets).astype(jnp.float32), masked)
    loss = masked_weight * masked_loss + unmasked_weight * unmasked_loss
    return loss, {"masked_accuracy": accuracy, "masked_loss": masked_loss, "unmasked_loss": unmasked_loss}
