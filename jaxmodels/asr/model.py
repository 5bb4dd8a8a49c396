"""SenseVoice-Small's non-autoregressive recogniser: a SAN-M encoder and a CTC head, with
the four learned prompt queries (language, event, emotion, text normalisation) as an option.

Structure and names follow the official model.py (FunAudioLLM/SenseVoice), so a
checkpoint's keys map one to one:
  SenseVoiceSmall: embed (prompt-query table), encoder, ctc_lo (the CTC head)
  SenseVoiceEncoderSmall: encoders0 (one layer, input width -> output_size),
    encoders (num_blocks - 1 layers), after_norm, tp_encoders (tp_blocks layers), tp_norm;
    encoders and tp_encoders are each one scanned module whose parameters stack the
    layers' on a leading axis (upstream's encoders.<i>.<name> is encoders/<name>[i]);
    with quantizer_layer, CosyVoice's S3 tokenizer inside the recogniser: encoders0 and
    encoders are the first quantizer_layer layers, then the quantizer (a VectorQuantizer, or
    with quantizer "fsq" a FiniteScalarQuantizer), the positions added again, and
    encoders_quantized the remaining layers
  EncoderLayerSANM: norm1, self_attn, norm2, feed_forward (pre-norm residual blocks)
  MultiHeadedAttentionSANM: linear_q_k_v, fsmn_block (depthwise 1-D conv over time on
    the values, "memory"), linear_out; output = attention + memory
Features are (B, T, D) with lengths (B,); padded frames are masked in attention and
zeroed around the FSMN convolution, as upstream.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.codec import quantization
from jaxmodels.nn import Dense, LayerNorm, constrain, repeated
from jaxmodels.nn.layers import default_kernel_init

# Prompt-query rows of `embed`, as upstream (lid_dict, textnorm_dict; 1, 2: event, emotion).
LANGUAGE_QUERY = {"auto": 0, "zh": 3, "en": 4, "yue": 7, "ja": 11, "ko": 12, "nospeech": 13}
EVENT_QUERY, EMOTION_QUERY = 1, 2
TEXTNORM_QUERY = {"withitn": 14, "woitn": 15}
NUM_QUERY_ROWS = 7 + len(LANGUAGE_QUERY) + len(TEXTNORM_QUERY)
NUM_PROMPTS = 4


def sinusoidal_positions(length: int, depth: int):
    """Upstream's SinusoidalPositionEncoder: positions 1..T, sin then cos halves, timescale
    increment log(10000) / (depth / 2 - 1)."""
    increment = np.log(10000.0) / (depth / 2 - 1)
    inv_timescales = np.exp(np.arange(depth // 2) * -increment)
    scaled = np.arange(1, length + 1)[:, None] * inv_timescales[None]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


class MultiHeadedAttentionSANM(nn.Module):
    n_head: int
    n_feat: int
    kernel_size: int = 11
    sanm_shift: int = 0
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        batch, length, _ = x.shape
        head_dim = self.n_feat // self.n_head
        qkv = Dense(3 * self.n_feat, ("embed", "qkv"), dtype=self.dtype, name="linear_q_k_v")(x)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        heads = lambda t: constrain(
            t.reshape(batch, length, self.n_head, head_dim), ("batch", "length", "heads", "kv")
        )

        # FSMN memory: a depthwise convolution over time of the (masked) values.
        frame_mask = mask[:, :, None].astype(v.dtype)
        memory_in = v * frame_mask
        kernel = self.param(
            "fsmn_block",
            nn.with_logical_partitioning(default_kernel_init, (None, "heads_flat")),
            (self.kernel_size, self.n_feat),
            jnp.float32,
        ).astype(self.dtype)
        left = (self.kernel_size - 1) // 2 + self.sanm_shift
        padded = jnp.pad(memory_in, ((0, 0), (left, self.kernel_size - 1 - left), (0, 0)))
        memory = sum(padded[:, i : i + length] * kernel[i] for i in range(self.kernel_size))
        memory = nn.Dropout(self.dropout_rate)(memory + memory_in, deterministic) * frame_mask

        # Padded keys filled with the lowest finite value, as FunASR's masked_fill: a row with
        # no frame at all (a skipped utterance) gets uniform weights, then zeros, where -inf
        # would give NaN and a NaN gradient however the row is masked later.
        keys = mask[:, None, None, :]  # (B, 1, 1, T)
        scores = jnp.einsum("bqhd,bkhd->bhqk", heads(q) * head_dim**-0.5, heads(k)).astype(jnp.float32)
        scores = jnp.where(keys, scores, jnp.finfo(jnp.float32).min)
        weights = jnp.where(keys, jax.nn.softmax(scores, axis=-1), 0.0)
        weights = nn.Dropout(self.dropout_rate)(weights.astype(self.dtype), deterministic)
        attended = jnp.einsum("bhqk,bkhd->bqhd", weights, heads(v)).reshape(batch, length, self.n_feat)
        return Dense(self.n_feat, ("qkv_out", "embed"), dtype=self.dtype, name="linear_out")(attended) + memory


class PositionwiseFeedForward(nn.Module):
    hidden_units: int
    dropout_rate: float = 0.1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool):
        h = jax.nn.relu(Dense(self.hidden_units, ("embed", "mlp"), dtype=self.dtype, name="w_1")(x))
        h = nn.Dropout(self.dropout_rate)(h, deterministic)
        return Dense(x.shape[-1], ("mlp", "embed"), dtype=self.dtype, name="w_2")(h)


class EncoderLayerSANM(nn.Module):
    size: int
    attention_heads: int
    linear_units: int
    kernel_size: int = 11
    sanm_shift: int = 0
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        in_size = x.shape[-1]
        h = LayerNorm(1e-5, "embed" if in_size == self.size else "features", self.dtype, name="norm1")(x)
        h = MultiHeadedAttentionSANM(
            self.attention_heads,
            self.size,
            self.kernel_size,
            self.sanm_shift,
            self.attention_dropout_rate,
            self.dtype,
            name="self_attn",
        )(h, mask, deterministic)
        h = nn.Dropout(self.dropout_rate)(h, deterministic)
        x = x + h if in_size == self.size else h  # the first layer changes width: no residual
        h = LayerNorm(1e-5, "embed", self.dtype, name="norm2")(x)
        h = PositionwiseFeedForward(self.linear_units, self.dropout_rate, self.dtype, name="feed_forward")(
            h, deterministic
        )
        x = x + nn.Dropout(self.dropout_rate)(h, deterministic)
        return constrain(x, ("batch", "length", "act_embed"))


class VectorQuantizer(nn.Module):
    """One codebook moved by the frames assigned to it, as CosyVoice's S3 tokenizer trains inside
    its recogniser (Du et al. 2024, section 2.1): jaxmodels.codec.quantization's rules (k-means
    at the first batch, exponential moving averages, dead codes replaced), frames unit-normalised
    first as the released speech_tokenizer_v1 compares them, the quantized frames passing the
    gradient straight through. The codebook is the "state" collection, moved in training when it
    is mutable (a "quantizer" rng). Returns the quantized frames and the codes (-1 past each row);
    the commitment loss over the valid frames is sown into "quantizer"."""

    codebook_size: int

    @nn.compact
    def __call__(self, x, valid, train: bool):
        shape = (1, self.codebook_size, x.shape[-1])
        codebook = self.variable("state", "codebook", lambda: quantization.init_state(None, *shape, kmeans_init=True))
        x = x.astype(jnp.float32)
        x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
        if train and self.is_mutable_collection("state"):
            q, codes, commit, codebook.value, _ = quantization.quantize_train(
                codebook.value, x, 1, self.make_rng("quantizer"), valid=valid
            )
            codes = codes[0]
        else:
            embed = codebook.value["embed"][0]
            codes = quantization.nearest_code(embed, x)
            q = x + jax.lax.stop_gradient(embed[codes] - x)
            error = jnp.sum(jnp.square(x - embed[codes]), -1) * valid
            commit = jnp.sum(error) / (jnp.maximum(jnp.sum(valid), 1) * x.shape[-1])
        self.sow("quantizer", "commitment", commit)
        return q, jnp.where(valid, codes, -1).astype(jnp.int32)


class FiniteScalarQuantizer(nn.Module):
    """CosyVoice 2's S3 quantizer (Du et al. 2024b, section 2.2) inside the recogniser: frames
    normalised, projected down to log3(codebook_size) values, each rounded to -1, 0 or 1
    (quantization.fsq, the gradient straight through) and projected back up. Nothing to move
    or commit. The norm because the encoder's residual frames are some ten times unit scale
    (its input is scaled by sqrt(output_size)): projected as they are, tanh saturates and
    passes the layers below almost no gradient. Returns the projected frames and the codes
    (-1 past each row)."""

    codebook_size: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, valid):
        dims = quantization.fsq_dims(self.codebook_size)
        x = LayerNorm(1e-5, "embed", self.dtype, name="norm")(x)
        rounded, codes = quantization.fsq(Dense(dims, ("embed", None), dtype=self.dtype, name="project_down")(x))
        x = Dense(x.shape[-1], (None, "embed"), dtype=self.dtype, name="project_up")(rounded)
        return x, jnp.where(valid, codes, -1).astype(jnp.int32)


class SenseVoiceEncoderSmall(nn.Module):
    output_size: int = 512
    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 50
    tp_blocks: int = 20
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    kernel_size: int = 11
    sanm_shift: int = 0
    quantizer_layer: int = 0  # > 0: S3's quantizer after this many layers
    quantizer: str = "vq"  # CosyVoice 1's VectorQuantizer, or CosyVoice 2's FiniteScalarQuantizer ("fsq")
    codebook_size: int = 4096  # fsq: 3 ** dims
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x, lengths, deterministic: bool = True, tokens_only: bool = False):
        """Frames (B, T, D); with tokens_only, the quantizer's codes (B, T), -1 past each row."""
        q = self.quantizer_layer
        if q and not 0 < q < self.num_blocks:
            raise ValueError(f"quantizer_layer {q}: the quantizer goes after layer 1 to {self.num_blocks - 1}")
        if self.quantizer not in ("vq", "fsq"):
            raise ValueError(f"quantizer {self.quantizer!r}: 'vq' (CosyVoice 1) or 'fsq' (CosyVoice 2)")
        mask = jnp.arange(x.shape[1])[None] < lengths[:, None]
        x = x * self.output_size**0.5 + sinusoidal_positions(x.shape[1], x.shape[2])
        x = x.astype(self.dtype)
        layer = nn.remat(EncoderLayerSANM, static_argnums=(3,)) if self.remat else EncoderLayerSANM
        args = (
            self.output_size,
            self.attention_heads,
            self.linear_units,
            self.kernel_size,
            self.sanm_shift,
            self.dropout_rate,
            self.attention_dropout_rate,
            self.dtype,
        )
        x = layer(*args, name="encoders0_0")(x, mask, deterministic)
        below = (q or self.num_blocks) - 1  # the layers of `encoders`
        if below:
            x, _ = repeated(layer, below)(*args, name="encoders")(x, mask, deterministic)
        if q:
            if self.quantizer == "vq":
                x, codes = VectorQuantizer(self.codebook_size, name="quantizer")(x, mask, not deterministic)
                x = x * self.output_size**0.5  # the unit-length codes at the frames' scale
            else:
                x, codes = FiniteScalarQuantizer(self.codebook_size, self.dtype, name="quantizer")(x, mask)
            if tokens_only:
                return codes
            x = (x + sinusoidal_positions(x.shape[1], x.shape[2])).astype(self.dtype)
            x, _ = repeated(layer, self.num_blocks - q)(*args, name="encoders_quantized")(x, mask, deterministic)
        x = LayerNorm(1e-5, "embed", self.dtype, name="after_norm")(x)
        if self.tp_blocks:
            x, _ = repeated(layer, self.tp_blocks)(*args, name="tp_encoders")(x, mask, deterministic)
        return LayerNorm(1e-5, "embed", self.dtype, name="tp_norm")(x)


class SenseVoiceSmall(nn.Module):
    """Features (B, T, input_size) -> CTC logits (B, T [+ 4], vocab_size).

    With `use_prompts`, four learned queries are prepended (language, event, emotion,
    text normalisation, as upstream's encode); `__call__` then returns the logits of all
    frames, the first four being the rich-transcription outputs (cross-entropy against
    the corresponding tokens) and the rest the CTC frames.
    """

    vocab_size: int
    input_size: int = 560
    encoder_conf: dict | None = None
    use_prompts: bool = True
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    def setup(self):
        self.embed = (
            nn.Embed(
                NUM_QUERY_ROWS,
                self.input_size,
                param_dtype=jnp.float32,
                embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, "features")),
            )
            if self.use_prompts
            else None
        )
        self.encoder = SenseVoiceEncoderSmall(**(self.encoder_conf or {}), dtype=self.dtype, remat=self.remat)
        self.ctc_lo = Dense(self.vocab_size, ("embed", "vocab"), dtype=self.dtype)

    def __call__(self, feats, lengths, language=None, textnorm=None, deterministic: bool = True):
        """language, textnorm: (B,) rows of `embed` (LANGUAGE_QUERY / TEXTNORM_QUERY values);
        default "auto" and "woitn"."""
        feats, lengths = self._prompted(feats, lengths, language, textnorm)
        hidden = self.encoder(feats, lengths, deterministic)
        return self.ctc_lo(hidden).astype(jnp.float32), lengths

    def _prompted(self, feats, lengths, language, textnorm):
        """The features with the four prompt queries before them (use_prompts), and their lengths."""
        if self.use_prompts:
            batch = feats.shape[0]
            language = jnp.zeros((batch,), jnp.int32) if language is None else language
            textnorm = jnp.full((batch,), TEXTNORM_QUERY["woitn"], jnp.int32) if textnorm is None else textnorm
            rows = jnp.stack(
                [language, jnp.full_like(language, EVENT_QUERY), jnp.full_like(language, EMOTION_QUERY), textnorm], 1
            )
            feats = jnp.concatenate([self.embed(rows).astype(feats.dtype), feats], axis=1)
            lengths = lengths + NUM_PROMPTS
        return feats, lengths

    def tokens(self, feats, lengths, language=None, textnorm=None):
        """The S3 quantizer's codes of the feature frames (B, T), -1 past each row's end."""
        codes = self.encoder(*self._prompted(feats, lengths, language, textnorm), tokens_only=True)
        return codes[:, codes.shape[1] - feats.shape[1] :]
