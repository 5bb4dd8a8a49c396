"""w2v-BERT 2.0's Conformer encoder (transformers' Wav2Vec2BertModel), channels-last, and the
converter of its transformers checkpoints.

The input is SeamlessM4TFeatureExtractor's features (`features`): 80 log-mel bins per 10 ms,
normalised per utterance, two frames stacked into one of 160 values per 20 ms. A layer norm
and a linear projection map them to the model width; padded frames are zeroed; then Conformer
layers (scanned), each pre-norm in the macaron layout: half a feed-forward, self-attention (by
default with Shaw's clipped relative-position key embeddings), a convolution module (GLU, a
causal depthwise convolution, a layer norm), the other half feed-forward, and a final layer
norm. An optional adapter (strided convolutions with attention, halving the frame rate per
layer) and the feed-forward before it follow the encoder. Padded keys are never attended to,
so the encoder's valid frames of a right-padded batch equal those of each utterance alone (the
adapter's strided convolutions read the padded frames, as transformers' do). Module names are
transformers', dots as underscores.
"""

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.asr.frontend import fbank
from jaxmodels.nn import Dense, LayerNorm, constrain, gelu, gelu_tanh
from jaxmodels.nn.attention import espnet_relative_position, relative_gather, relative_sinusoids, self_attention
from jaxmodels.nn.layers import default_kernel_init
from jaxmodels.nn.state_dict import assign_state_dict, stack_layers

Dtype = Any
FRAMES = ("batch", None, "act_embed")
POSITION_EMBEDDINGS = ("relative_key", "relative", "rotary", None)
ACTIVATIONS = {
    "swish": jax.nn.silu,
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
    "gelu": gelu,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
}


def features(waveform, lengths, stride: int = 2):
    """SeamlessM4TFeatureExtractor's features of 16 kHz waveforms (B, N) in [-1, 1] with
    lengths (B,): Kaldi's filterbank (80 bins, Povey window, the waveform at 16-bit scale),
    each bin normalised over the utterance's own frames (unbiased variance, + 1e-7), padded
    frames 0, then `stride` frames stacked: (B, T // stride, 80 * stride) and valid lengths
    (B,), a stacked frame valid where its last frame is, as the extractor's attention mask."""
    feats, frames = fbank(waveform, lengths, num_mel_bins=80, window="povey")
    valid = (jnp.arange(feats.shape[1])[None] < frames[:, None])[..., None]
    count = frames[:, None, None].astype(jnp.float32)
    mean = jnp.sum(jnp.where(valid, feats, 0.0), axis=1, keepdims=True) / jnp.maximum(count, 1.0)
    var = jnp.sum(jnp.where(valid, (feats - mean) ** 2, 0.0), axis=1, keepdims=True) / jnp.maximum(count - 1, 1.0)
    feats = jnp.where(valid, (feats - mean) / jnp.sqrt(var + 1e-7), 0.0)
    batch, total, bins = feats.shape
    kept = total // stride * stride
    return feats[:, :kept].reshape(batch, kept // stride, stride * bins), frames // stride


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def _conv(features, kernel, axes, dtype, name, stride=1, padding=(0, 0), groups=1, use_bias=False):
    """PyTorch's Conv1d on (B, T, C), kernel (k, in/groups, out)."""
    return nn.Conv(
        features,
        (kernel,),
        (stride,),
        (padding,),
        feature_group_count=groups,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(default_kernel_init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]),
        name=name,
    )


def _feed_forward(x, intermediate_size, act, dtype, prefix):
    h = act(Dense(intermediate_size, ("embed", "mlp"), dtype=dtype, name=f"{prefix}_intermediate_dense")(x))
    return Dense(x.shape[-1], ("mlp", "embed"), dtype=dtype, name=f"{prefix}_output_dense")(h)


def _glu(h):
    c = h.shape[-1] // 2
    return h[..., :c] * jax.nn.sigmoid(h[..., c:])


class ConformerLayer(nn.Module):
    """One Conformer layer: x + FFN1/2, + attention, + convolution module, + FFN2/2, layer norm."""

    num_attention_heads: int
    intermediate_size: int
    hidden_act: str
    conv_depthwise_kernel_size: int
    position_embeddings_type: str | None
    left_max_position_embeddings: int
    right_max_position_embeddings: int
    layer_norm_eps: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, valid, positions):
        """`positions`: the encoder's table for "relative" (sinusoids of the 2T-1 relative
        positions T-1 ... 1-T) and "rotary" (cos and sin, (2, T, head size)), else None."""
        norm = lambda name: LayerNorm(self.layer_norm_eps, dtype=self.dtype, name=name)
        act = _activation(self.hidden_act)
        x = x + 0.5 * _feed_forward(norm("ffn1_layer_norm")(x), self.intermediate_size, act, self.dtype, "ffn1")
        x = x + self.attention(norm("self_attn_layer_norm")(x), valid, positions)
        x = x + self.conv_module(x, valid, act)
        x = x + 0.5 * _feed_forward(norm("ffn2_layer_norm")(x), self.intermediate_size, act, self.dtype, "ffn2")
        x = constrain(norm("final_layer_norm")(x), FRAMES)
        return x, x

    def attention(self, y, valid, positions):
        b, t, d = y.shape
        heads = self.num_attention_heads
        head = d // heads
        scale = head**-0.5
        kind = self.position_embeddings_type
        if kind == "relative_key":
            left, right = self.left_max_position_embeddings, self.right_max_position_embeddings
            table = self.param(
                "self_attn_distance_embedding",
                nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None)),
                (left + right + 1, head),
            )
            # Key j of query i reads row clip(j - i, -left, right) + left. Each query's products
            # with the few rows, then a gather, take T x rows dot products; the (T, T, head) table
            # of gathered embeddings that transformers contracts takes T x T, and its memory.
            index = jnp.clip(jnp.arange(t)[None] - jnp.arange(t)[:, None], -left, right) + left

            def position(q):
                rows = jnp.einsum("bthd,rd->bhtr", q, table.astype(q.dtype), preferred_element_type=jnp.float32)
                return q, relative_gather(rows, index) * scale

            return self_attention(y, valid, heads, self.dtype, position=position)
        if kind == "relative":
            position = espnet_relative_position(self, positions, heads)
            return self_attention(y, valid, heads, self.dtype, position=position)
        if kind == "rotary":
            # Rotates the normalised input, before the query and key projections (values unrotated).
            cos, sin = positions.astype(y.dtype)[:, None, :, None, :]
            h = y.reshape(b, t, heads, head)
            rotated = jnp.concatenate([-h[..., head // 2 :], h[..., : head // 2]], -1)
            return self_attention(y, valid, heads, self.dtype, qk_input=(h * cos + rotated * sin).reshape(b, t, d))
        return self_attention(y, valid, heads, self.dtype)

    def conv_module(self, x, valid, act):
        d, k = x.shape[-1], self.conv_depthwise_kernel_size
        h = LayerNorm(self.layer_norm_eps, dtype=self.dtype, name="conv_module_layer_norm")(x)
        h = jnp.where(valid[..., None], h, 0.0)  # the causal convolution must not read padded frames
        h = _glu(_conv(2 * d, 1, (None, "embed", "mlp"), self.dtype, "conv_module_pointwise_conv1")(h))
        h = _conv(
            d, k, (None, None, "conv_channels"), self.dtype, "conv_module_depthwise_conv", padding=(k - 1, 0), groups=d
        )(h)
        h = act(LayerNorm(self.layer_norm_eps, dtype=self.dtype, name="conv_module_depthwise_layer_norm")(h))
        return _conv(d, 1, (None, "mlp", "embed"), self.dtype, "conv_module_pointwise_conv2")(h)


class AdapterLayer(nn.Module):
    """One adapter layer: strided GLU convolutions of the input (a residual and the attention's
    input), attention without positions over the frames the subsampled lengths keep, a
    feed-forward with adapter_act (ReLU)."""

    num_attention_heads: int
    intermediate_size: int
    adapter_kernel_size: int
    adapter_stride: int
    adapter_act: str
    layer_norm_eps: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, lengths=None):
        """(B, T, E) -> (B, T', E); `lengths` the valid output frames per row (None: all)."""
        e, k, s = x.shape[-1], self.adapter_kernel_size, self.adapter_stride
        norm = lambda name: LayerNorm(self.layer_norm_eps, dtype=self.dtype, name=name)
        conv = lambda name: _conv(
            2 * e, k, (None, "embed", "mlp"), self.dtype, name, stride=s, padding=(s // 2, s // 2), use_bias=True
        )
        residual = _glu(conv("residual_conv")(norm("residual_layer_norm")(x)))
        y = _glu(conv("self_attn_conv")(norm("self_attn_layer_norm")(x)))
        valid = None if lengths is None else jnp.arange(y.shape[1])[None] < lengths[:, None]
        x = self_attention(y, valid, self.num_attention_heads, self.dtype) + residual
        act = _activation(self.adapter_act)
        return x + _feed_forward(norm("ffn_layer_norm")(x), self.intermediate_size, act, self.dtype, "ffn")


class W2vBertEncoder(nn.Module):
    """Features (B, T, 160) -> frames (B, T, hidden_size) at 50 Hz (with the adapter, (B, T',
    output_hidden_size) at 50 / adapter_stride^num_adapter_layers Hz); arguments as transformers'
    Wav2Vec2BertConfig, defaults facebook/w2v-bert-2.0's. masked_spec_embed exists where
    mask_time_prob or mask_feature_prob is positive, as there."""

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    feature_projection_input_dim: int = 160
    hidden_act: str = "swish"
    layer_norm_eps: float = 1e-5
    position_embeddings_type: str | None = "relative_key"
    left_max_position_embeddings: int = 64
    right_max_position_embeddings: int = 8
    rotary_embedding_base: int = 10000
    conv_depthwise_kernel_size: int = 31
    mask_time_prob: float = 0.05
    mask_feature_prob: float = 0.0
    add_adapter: bool = False
    adapter_kernel_size: int = 3
    adapter_stride: int = 2
    num_adapter_layers: int = 1
    adapter_act: str = "relu"
    use_intermediate_ffn_before_adapter: bool = False
    output_hidden_size: int | None = None
    dtype: Dtype = jnp.float32
    remat: bool = False

    def setup(self):
        if self.position_embeddings_type not in POSITION_EMBEDDINGS:
            raise ValueError(
                f"position_embeddings_type {self.position_embeddings_type!r} is not supported "
                f"(supported: {', '.join(map(repr, POSITION_EMBEDDINGS))})"
            )
        if self.conv_depthwise_kernel_size % 2 == 0:
            raise ValueError(f"conv_depthwise_kernel_size {self.conv_depthwise_kernel_size}: must be odd")
        if self.use_intermediate_ffn_before_adapter and not self.add_adapter:
            raise ValueError("use_intermediate_ffn_before_adapter needs add_adapter")
        self.feature_projection_layer_norm = LayerNorm(self.layer_norm_eps, axis_name="conv_in", dtype=self.dtype)
        self.feature_projection_projection = Dense(self.hidden_size, ("conv_in", "embed"), dtype=self.dtype)
        if self.has_mask_embedding:
            self.masked_spec_embed = self.param(
                "masked_spec_embed",
                nn.with_logical_partitioning(nn.initializers.uniform(), ("embed",)),
                (self.hidden_size,),
            )
        layer = nn.remat(ConformerLayer) if self.remat else ConformerLayer
        self.encoder_layers = nn.scan(
            layer,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=nn.broadcast,
            length=self.num_hidden_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(
            self.num_attention_heads,
            self.intermediate_size,
            self.hidden_act,
            self.conv_depthwise_kernel_size,
            self.position_embeddings_type,
            self.left_max_position_embeddings,
            self.right_max_position_embeddings,
            self.layer_norm_eps,
            self.dtype,
        )
        if self.use_intermediate_ffn_before_adapter:
            self.intermediate_ffn_intermediate_dense = Dense(
                self.intermediate_size, ("embed", "mlp"), dtype=self.dtype
            )
            self.intermediate_ffn_output_dense = Dense(self.hidden_size, ("mlp", "embed"), dtype=self.dtype)
        if self.add_adapter:
            width = self.output_hidden_size or self.hidden_size
            if width != self.hidden_size:
                self.adapter_proj = Dense(width, ("mlp", "embed"), dtype=self.dtype)
                self.adapter_proj_layer_norm = LayerNorm(self.layer_norm_eps, dtype=self.dtype)
            self.adapter_layers = [
                AdapterLayer(
                    self.num_attention_heads,
                    self.intermediate_size,
                    self.adapter_kernel_size,
                    self.adapter_stride,
                    self.adapter_act,
                    self.layer_norm_eps,
                    self.dtype,
                )
                for _ in range(self.num_adapter_layers)
            ]

    @property
    def has_mask_embedding(self) -> bool:
        return self.mask_time_prob > 0 or self.mask_feature_prob > 0

    def positions(self, frames: int):
        """The position table the layers share ("relative": (2T-1, D) sinusoids of the relative
        positions T-1 ... 1-T; "rotary": cos and sin, (2, T, head size)), float32 as transformers
        builds it; None for the other kinds."""
        if self.position_embeddings_type == "relative":
            return relative_sinusoids(frames, self.hidden_size)
        if self.position_embeddings_type == "rotary":
            head = self.hidden_size // self.num_attention_heads
            inverse = 1.0 / (jnp.float32(self.rotary_embedding_base) ** (jnp.arange(0, head, 2) / head))
            angles = jnp.arange(frames, dtype=jnp.float32)[:, None] * inverse
            angles = jnp.concatenate([angles, angles], -1)
            return jnp.stack([jnp.cos(angles), jnp.sin(angles)])
        return None

    def encode(self, features, paddings=None, mask=None):
        """(transformers' hidden_states, valid (B, T) bool)."""
        valid = jnp.ones(features.shape[:2], bool) if paddings is None else paddings == 0
        x = self.feature_projection_projection(self.feature_projection_layer_norm(features))
        if mask is not None:
            if not self.has_mask_embedding:
                raise ValueError("a mask needs masked_spec_embed (mask_time_prob or mask_feature_prob > 0)")
            x = jnp.where(mask[..., None], self.masked_spec_embed.astype(x.dtype), x)
        x = constrain(jnp.where(valid[..., None], x, 0.0), FRAMES)
        _, outputs = self.encoder_layers(x, valid, self.positions(x.shape[1]))
        return [x, *outputs], valid

    def hidden_states(self, features, paddings=None, mask=None):
        """transformers' hidden_states of features (B, T, 160), `paddings` (B, T) 1 at padding:
        the projected features (padded frames zeroed; the frames `mask` (B, T) marks replaced by
        the learned masked_spec_embed, as mask_time_indices there), then each layer's output."""
        return self.encode(features, paddings, mask)[0]

    def __call__(self, features, paddings=None, mask=None):
        """The last hidden state: the last layer's output, then the intermediate feed-forward and
        the adapter where the model has them."""
        hidden, valid = self.encode(features, paddings, mask)
        x = hidden[-1]
        if self.use_intermediate_ffn_before_adapter:
            x = x + 0.5 * self.intermediate_ffn_output_dense(jax.nn.relu(self.intermediate_ffn_intermediate_dense(x)))
        if self.add_adapter:
            if (self.output_hidden_size or self.hidden_size) != self.hidden_size:
                x = self.adapter_proj_layer_norm(self.adapter_proj(x))
            lengths = None if paddings is None else valid.sum(1)
            for layer in self.adapter_layers:
                lengths = None if lengths is None else output_lengths(self, lengths, layers=1)
                x = layer(x, lengths)
        return x


def output_lengths(model: W2vBertEncoder, lengths, layers: int | None = None):
    """Valid output frames of inputs with `lengths` valid frames: after the adapter's layers
    (all of them where `layers` is None; the input's where the model has no adapter), as
    transformers' _get_feat_extract_output_lengths."""
    if not model.add_adapter:
        return lengths
    k = model.adapter_kernel_size
    for _ in range(model.num_adapter_layers if layers is None else layers):
        lengths = (lengths + 2 * (k // 2) - k) // model.adapter_stride + 1
    return lengths


_PREFIX = re.compile(r"^wav2vec2_bert\.")
_LIST = re.compile(r"^(encoder|adapter)\.layers\.(\d+)\.(.+)$")


def _entry(key: str, value: np.ndarray) -> tuple:
    """(Flax path below its module list entry or the model, value in Flax layout) of one key."""
    if key.endswith("distance_embedding.weight"):  # an Embedding: its rows are relative distances
        return (key.removesuffix(".weight").replace(".", "_"),), value
    module, _, leaf = key.rpartition(".")
    if leaf.startswith("pos_bias_") or not module:  # bare parameters
        return (key.replace(".", "_"),), value
    module = module.replace(".", "_")
    if leaf == "bias":
        return (module, "bias"), value
    if value.ndim == 1:  # a norm's weight
        return (module, "scale"), value
    if value.ndim == 2:  # Linear (out, in) -> (in, out)
        return (module, "kernel"), value.T
    return (module, "kernel"), value.transpose(2, 1, 0)  # Conv1d (out, in/groups, k) -> (k, in/groups, out)


def from_torch(state_dict: dict, model: W2vBertEncoder) -> dict:
    """{"params": ...} of `model` from a transformers Wav2Vec2BertModel state_dict (keys of a
    model around one, prefixed wav2vec2_bert., taken without it); the encoder layers stacked
    along the scanned axis. Raises ValueError naming every key and shape that does not fit."""
    init = lambda k: model.init(k, jnp.zeros((1, 64, model.feature_projection_input_dim)))
    shapes = nn.meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0)))["params"]
    converted, paths, layers = {}, {}, {}
    for key, value in state_dict.items():
        key = _PREFIX.sub("", key)
        m = _LIST.match(key)
        path, value = _entry(m[3] if m else key, np.asarray(value))
        if m and m[1] == "encoder":
            _, by_index = layers.setdefault(f"encoder.layers.*.{m[3]}", (("encoder_layers", *path), {}))
            by_index[int(m[2])] = value
        else:
            converted[key], paths[key] = value, (f"adapter_layers_{m[2]}", *path) if m else path
    for key, (path, by_index) in layers.items():
        converted[key], paths[key] = stack_layers(key, by_index, model.num_hidden_layers), path
    return {"params": assign_state_dict(converted, shapes, lambda key, value: (paths[key], value))}


# transformers' Wav2Vec2BertConfig keys the model takes (the rest are training settings or heads').
CONFIG_KEYS = tuple(f for f in W2vBertEncoder.__dataclass_fields__ if f not in ("parent", "name", "dtype", "remat"))


def from_transformers(state_dict: dict, config: dict, **overrides) -> tuple:
    """(model, variables) of a transformers Wav2Vec2BertModel: its state_dict and its config
    (config.to_dict(), or the config.json beside the weights); `overrides` (dtype, remat, ...)
    replace config values."""
    if config.get("model_type") != "wav2vec2-bert":
        raise ValueError(f"model_type {config.get('model_type')!r}: expected wav2vec2-bert")
    model = W2vBertEncoder(**{**{k: v for k, v in config.items() if k in CONFIG_KEYS}, **overrides})
    return model, from_torch(state_dict, model)
