"""The EnCodec model (facebookresearch/encodec, encodec/model.py): SEANet encoder, RVQ,
SEANet decoder; the config with upstream's argument names; a ready-to-use codec object."""

import dataclasses
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.codec import quantization, seanet
from jaxmodels.codec.seanet import SEANet, SEANetDecoder, SEANetEncoder


@dataclasses.dataclass(frozen=True)
class EncodecConfig:
    """Everything that defines an EnCodec model, named as upstream's constructors name it
    (SEANetEncoder/Decoder, ResidualVectorQuantizer, EncodecModel); defaults are upstream's,
    except ``causal``/``n_q``/``target_bandwidths``, which are the 24 kHz model's."""

    sample_rate: int = 24000
    channels: int = 1
    dimension: int = 128
    n_filters: int = 32
    n_residual_layers: int = 1
    ratios: tuple[int, ...] = (8, 5, 4, 2)
    norm: str = "weight_norm"
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_base: int = 2
    causal: bool = True
    pad_mode: str = "reflect"
    true_skip: bool = False
    compress: int = 2
    lstm: int = 2
    activation: str = "ELU"
    trim_right_ratio: float = 1.0
    n_q: int = 32
    bins: int = 1024
    target_bandwidths: tuple[float, ...] = (1.5, 3.0, 6.0, 12.0, 24.0)
    normalize: bool = False
    segment: float | None = None
    overlap: float = 0.01
    # Codebook training (ResidualVectorQuantizer's arguments).
    decay: float = 0.99
    kmeans_init: bool = True
    kmeans_iters: int = 50
    threshold_ema_dead_code: float = 2.0
    # SpeechTokenizer (speechtokenizer/model.py): a bidirectional encoder LSTM, and the
    # projection ("transform") of the first quantizer's output to the semantic teacher's width.
    bidirectional: bool = False
    semantic_dimension: int | None = None

    @classmethod
    def from_dict(cls, d) -> "EncodecConfig":
        """From a dict such as the fixtures' config.json; unknown keys are an error naming the valid ones."""
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - valid
        if unknown:
            raise ValueError(f"unknown EnCodec config key(s) {sorted(unknown)}; valid: {sorted(valid)}")
        d = dict(d)
        for key in ("ratios", "target_bandwidths"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    @property
    def hop_length(self) -> int:
        return int(np.prod(self.ratios))

    @property
    def frame_rate(self) -> int:
        return math.ceil(self.sample_rate / self.hop_length)

    @property
    def segment_length(self) -> int | None:
        return None if self.segment is None else int(self.segment * self.sample_rate)

    @property
    def segment_stride(self) -> int | None:
        return None if self.segment is None else max(1, int((1 - self.overlap) * self.segment_length))

    def num_quantizers(self, bandwidth: float | None) -> int:
        return quantization.num_quantizers(bandwidth, self.n_q, self.bins, self.frame_rate)

    def seanet_kwargs(self) -> dict:
        """The SEANet arguments (both encoder's and decoder's) of this config."""
        names = {f.name for f in dataclasses.fields(SEANet)} - {"parent", "name", "dtype"}
        return {k: getattr(self, k) for k in names}


class Encodec(nn.Module):
    """The trainable part: encoder and decoder (the codebooks are EMA state, see quantization),
    and SpeechTokenizer's semantic projection."""

    config: EncodecConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        c = self.config
        kw = c.seanet_kwargs()
        self.encoder = SEANetEncoder(**kw, bidirectional=c.bidirectional, dtype=self.dtype)
        self.decoder = SEANetDecoder(**kw, trim_right_ratio=c.trim_right_ratio, dtype=self.dtype)
        if c.semantic_dimension and c.semantic_dimension != c.dimension:  # upstream's nn.Identity otherwise
            init = seanet.torch_uniform(c.dimension)
            self.transform = nn.Dense(
                c.semantic_dimension,
                kernel_init=nn.with_logical_partitioning(init, ("embed", "mlp")),
                bias_init=nn.with_logical_partitioning(init, ("mlp",)),
                dtype=self.dtype,
            )

    def semantic_projection(self, quantized):
        """The first quantizer's output (B, frames, dimension) -> (B, frames, semantic_dimension), in float32."""
        if not hasattr(self, "transform"):
            return quantized
        return self.transform(quantized).astype(jnp.float32)

    def encode_latent(self, x, streaming: bool = False):
        """Waveform (B, T, channels) -> embeddings (B, frames, dimension), in float32."""
        return self.encoder(x, streaming).astype(jnp.float32)

    def decode_latent(self, z, streaming: bool = False):
        """Embeddings (B, frames, dimension) -> waveform (B, frames x hop, channels), in float32."""
        return self.decoder(z, streaming).astype(jnp.float32)

    def __call__(self, x):
        """The reconstruction of x (without quantization); the path that creates every parameter."""
        z = self.encode_latent(x)
        if self.config.semantic_dimension:
            self.semantic_projection(z)
        return self.decode_latent(z)


EncodedFrame = tuple[jax.Array, jax.Array | None]


class Codec:
    """A ready EnCodec: weights, codebooks and config, with upstream's encode/decode.

    ``variables`` is ``{"params": ..., "codebooks": ...}`` (from ``from_torch``, ``create``
    or a training checkpoint). Waveforms are channels-last (B, T, channels); codes are
    upstream's (B, K, frames).
    """

    def __init__(self, config: EncodecConfig, variables, dtype=jnp.float32):
        self.config = config
        self.model = Encodec(config, dtype)
        self.params = variables["params"]
        self.codebooks = variables["codebooks"]
        self._encode = jax.jit(self._encode_frame, static_argnums=2)
        self._decode = jax.jit(self._decode_frame)
        self._semantic = jax.jit(self._semantic_features)

    def param_count(self) -> int:
        """As upstream's sum(p.numel() for p in model.parameters()): the codebooks are buffers, not counted."""
        return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(self.params))

    def _check(self, wav):
        if wav.ndim != 3 or wav.shape[-1] != self.config.channels:
            raise ValueError(
                f"expected a waveform of shape (batch, time, {self.config.channels}) "
                f"(channels last), got {tuple(wav.shape)}"
            )

    def _bandwidth(self, bandwidth):
        if bandwidth is not None and bandwidth not in self.config.target_bandwidths:
            raise ValueError(
                f"bandwidth {bandwidth} kbps is not one of this model's: {list(self.config.target_bandwidths)}"
            )
        return self.config.num_quantizers(bandwidth)

    def _encode_frame(self, params, x, n_q):
        scale = None
        if self.config.normalize:
            volume = jnp.sqrt(jnp.mean(jnp.square(jnp.mean(x, axis=-1)), axis=1, keepdims=True))
            scale = 1e-8 + volume
            x = x / scale[:, :, None]
        emb = self.model.apply({"params": params}, x, method=Encodec.encode_latent)
        codes = quantization.encode(self.codebooks["embed"], emb, n_q)
        return codes.transpose(1, 0, 2), scale

    def _decode_frame(self, params, codes, scale):
        emb = quantization.decode(self.codebooks["embed"], codes.transpose(1, 0, 2))
        out = self.model.apply({"params": params}, emb, method=Encodec.decode_latent)
        return out if scale is None else out * scale[:, :, None]

    def _semantic_features(self, params, x):
        emb = self.model.apply({"params": params}, x, method=Encodec.encode_latent)
        first = self.codebooks["embed"][0]
        quantized = first[quantization.nearest_code(first, emb)]
        return self.model.apply({"params": params}, quantized, method=Encodec.semantic_projection)

    def semantic_features(self, wav):
        """The first quantizer's output through the semantic projection, (B, frames,
        semantic_dimension): what SpeechTokenizer distils from its teacher (upstream's forward's
        ``feature``)."""
        self._check(wav)
        if not self.config.semantic_dimension:
            raise ValueError("this codec has no semantic projection (semantic_dimension is not set)")
        return self._semantic(self.params, jnp.asarray(wav))

    def encode(self, wav, bandwidth: float | None = None) -> list[EncodedFrame]:
        """Codes of each segment (one for models without segments) at ``bandwidth`` kbps
        (None: all codebooks), with its normalisation scale (B, 1) or None."""
        self._check(wav)
        n_q = self._bandwidth(bandwidth)
        length = wav.shape[1]
        seg, stride = self.config.segment_length, self.config.segment_stride
        if seg is None:
            seg = stride = length
        return [
            self._encode(self.params, jnp.asarray(wav[:, offset : offset + seg]), n_q)
            for offset in range(0, length, stride)
        ]

    def decode(self, frames: Sequence[EncodedFrame]):
        """Waveform (B, T', channels) from encode's frames; T' may exceed the input's length
        (upstream's forward trims it)."""
        decoded = [self._decode(self.params, jnp.asarray(codes), scale) for codes, scale in frames]
        if self.config.segment_length is None:
            if len(decoded) != 1:
                raise ValueError(f"a model without segments decodes one frame, got {len(decoded)}")
            return decoded[0]
        return linear_overlap_add(decoded, self.config.segment_stride)

    def streaming_encoder(self, bandwidth: float | None = None) -> "StreamingEncoder":
        return StreamingEncoder(self, self._bandwidth(bandwidth))

    def streaming_decoder(self) -> "StreamingDecoder":
        return StreamingDecoder(self)


def linear_overlap_add(frames, stride: int):
    """Upstream's overlap-add of segments: triangular weights peaking mid-segment, normalised by their sum."""
    frame_length = frames[0].shape[1]
    total = stride * (len(frames) - 1) + frames[-1].shape[1]
    t = np.linspace(0, 1, frame_length + 2, dtype=np.float32)[1:-1]
    weight = 0.5 - np.abs(t - 0.5)
    out = jnp.zeros((frames[0].shape[0], total, frames[0].shape[2]), frames[0].dtype)
    weights = np.zeros((total,), np.float32)
    for i, frame in enumerate(frames):
        n, offset = frame.shape[1], i * stride
        out = out.at[:, offset : offset + n].add(weight[:n, None] * frame)
        weights[offset : offset + n] += weight[:n]
    return out / weights[:, None]


class _Stream:
    """Chunk-by-chunk processing with the SEANet caches carried between calls."""

    def __init__(self, codec: Codec, method):
        if not codec.config.causal:
            raise ValueError("streaming needs a causal model; this one has causal=False (it uses segments)")
        self.codec, self.cache = codec, None

        def run(params, cache, x):
            variables = {"params": params} if cache is None else {"params": params, "cache": cache}
            return codec.model.apply(variables, x, True, method=method, mutable=["cache"])

        self._run = jax.jit(run)

    def _step(self, x):
        out, updated = self._run(self.codec.params, self.cache, x)
        self.cache = updated["cache"]
        return out


class StreamingEncoder(_Stream):
    """Call with consecutive chunks (B, n, channels) of a waveform; returns each chunk's codes
    (B, K, frames). Every chunk but the last must be a multiple of the hop length, and the
    first at least ``min_first_chunk`` samples (its start is padded by reflection, as the
    whole signal's). The concatenated codes equal ``encode`` of the whole waveform."""

    def __init__(self, codec: Codec, n_q: int):
        super().__init__(codec, Encodec.encode_latent)
        self.n_q, self.finished = n_q, False
        c = codec.config
        self.min_first_chunk = c.hop_length * max(c.kernel_size, c.last_kernel_size)

    def __call__(self, chunk):
        c = self.codec.config
        self.codec._check(chunk)
        if self.finished:
            raise ValueError(
                "the stream has ended: a chunk that is not a multiple of the hop length "
                f"({c.hop_length}) must be the last"
            )
        if self.cache is None and chunk.shape[1] < self.min_first_chunk:
            raise ValueError(f"the first chunk has {chunk.shape[1]} samples; it needs at least {self.min_first_chunk}")
        self.finished = chunk.shape[1] % c.hop_length != 0
        emb = self._step(jnp.asarray(chunk))
        return quantization.encode(self.codec.codebooks["embed"], emb, self.n_q).transpose(1, 0, 2)


class StreamingDecoder(_Stream):
    """Call with consecutive chunks of codes (B, K, frames); returns each chunk's waveform
    (B, frames x hop, channels). The first chunk needs at least ``min_first_chunk`` frames.
    The concatenated output equals ``decode`` of all codes at once."""

    def __init__(self, codec: Codec):
        super().__init__(codec, Encodec.decode_latent)
        self.min_first_chunk = codec.config.kernel_size

    def __call__(self, codes):
        if self.cache is None and codes.shape[2] < self.min_first_chunk:
            raise ValueError(f"the first chunk has {codes.shape[2]} frames; it needs at least {self.min_first_chunk}")
        emb = quantization.decode(self.codec.codebooks["embed"], jnp.asarray(codes).transpose(1, 0, 2))
        return self._step(emb)
