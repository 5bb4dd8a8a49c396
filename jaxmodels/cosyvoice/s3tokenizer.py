"""CosyVoice's supervised semantic speech tokenizers (S3) as the `s3tokenizer` package ports
the released speech_tokenizer_v1 / v2 to PyTorch: 16 kHz speech -> one token per 20 ms (v1)
or 40 ms (v1_25hz, v2).

The front end is Whisper's log-mel (400-point periodic Hann STFT every 160 samples, centred
with reflection, the last frame dropped; 128 Slaney mel filters; log10 floored at 1e-10,
then at the utterance's maximum minus 8; (x + 4) / 4), computed per row of a padded batch at
its own length. The encoder is Whisper's without its final norm: two GELU convolutions
(kernel 3; strides 1 or 2, then 2; each input zeroed past its frames), pre-norm Transformer
blocks (the key projection without bias, exact GELU MLP, norms at eps 1e-5) attending over
the valid frames. Version 1 adds a sinusoid table to the frames and quantizes them by the
nearest of 4096 codewords to the unit-normalised frame; version 2 rotates queries and keys
(RoPE, rotate-half) and adds an FSMN memory (a depthwise convolution of kernel 31 over the
masked value projection, plus it) after the attention's output projection, and quantizes by
FSQ: eight tanh projections scaled by 0.999, rounded to {-1, 0, 1}, read as base-3 digits
(the first least significant), 3^8 codes.

The codebook and the sinusoid table are buffers upstream: here the "state" collection.
Module names are upstream's, dots as underscores; blocks stacked ("layers" axis).
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.codec import quantization
from jaxmodels.codec.losses import mel_filterbank
from jaxmodels.cosyvoice.encoder import layer_path
from jaxmodels.cosyvoice.llm import ragged_concat
from jaxmodels.nn import Dense, LayerNorm, gelu, repeated, variants
from jaxmodels.nn.attention import dot_product_attention
from jaxmodels.nn.layers import default_kernel_init
from jaxmodels.nn.state_dict import assign_state_dict, load_state_dict, stack_layers
from jaxmodels.nn.variants import named_config

SAMPLE_RATE = 16000
N_FFT, HOP = 400, 160
# Longer audio is tokenized in windows, as the package's quantize: 30 s of mel frames every 26 s,
# each window's first and last 2 s of tokens dropped where a neighbour has them.
WINDOW, STRIDE, MARGIN_SECONDS = 3000, 2600, 2


@dataclasses.dataclass(frozen=True)
class S3Config:
    """The package's ModelConfig, the version and the first convolution's stride."""

    version: int = 1  # 1: VQ with a sinusoid table; 2: FSQ with RoPE and FSMN memory
    n_mels: int = 128
    n_audio_ctx: int = 1500  # the sinusoid table's rows (version 1)
    n_audio_state: int = 1280
    n_audio_head: int = 20
    n_audio_layer: int = 6
    n_codebook_size: int = 4096  # version 2: 3^fsq_dims
    conv1_stride: int = 1  # 1: 50 Hz tokens; 2: 25 Hz
    fsq_dims: int = 8
    fsmn_kernel: int = 31

    @property
    def token_rate(self) -> float:
        return SAMPLE_RATE / HOP / (2 * self.conv1_stride)


CONFIGS = {
    "speech_tokenizer_v1": S3Config(),  # 123,466,240 parameters (CosyVoice-300M)
    "speech_tokenizer_v1_25hz": S3Config(conv1_stride=2),  # CosyVoice-300M-25Hz
    "speech_tokenizer_v2_25hz": S3Config(version=2, conv1_stride=2, n_codebook_size=3**8),  # CosyVoice 2
}


def log_mel_spectrogram(audio, lengths, n_mels: int = 128):
    """Whisper's log-mel of each row of a padded batch (B, N) at its length (B,): (B, N // 160,
    n_mels) and the frame counts (B,); frames past a row's count are zero. Each row is reflected
    at its own ends, and floored at its own maximum minus 8, as the package does alone."""
    b, n = audio.shape
    frames = n // HOP
    start = jnp.arange(frames)[:, None] * HOP - N_FFT // 2 + jnp.arange(N_FFT)[None]  # (frames, N_FFT)
    last = jnp.maximum(lengths, 1)[:, None, None] - 1
    index = jnp.abs(start)[None]  # reflection at 0
    index = jnp.where(index > last, 2 * last - index, index)  # and at the row's end
    x = jnp.take_along_axis(audio.astype(jnp.float32), index.reshape(b, -1), axis=1).reshape(b, frames, N_FFT)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic Hann
    power = jnp.abs(jnp.fft.rfft(x * window, axis=-1)) ** 2
    filters = mel_filterbank(N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, n_mels, SAMPLE_RATE, "slaney", "slaney")
    mel = jnp.log10(jnp.maximum(jnp.einsum("btf,fm->btm", power, filters, precision="highest"), 1e-10))
    counts = lengths // HOP
    valid = (jnp.arange(frames)[None] < counts[:, None])[..., None]
    peak = jnp.max(jnp.where(valid, mel, -jnp.inf), axis=(1, 2), keepdims=True)
    mel = (jnp.maximum(mel, peak - 8.0) + 4.0) / 4.0
    return jnp.where(valid, mel, 0.0), counts


def sinusoids(length: int, channels: int) -> np.ndarray:
    """Whisper's table (length, channels): sines then cosines of timescales up to 10000, float32."""
    increment = np.float32(math.log(10000) / (channels // 2 - 1))
    inverse = np.exp(-increment * np.arange(channels // 2, dtype=np.float32))
    scaled = np.arange(length, dtype=np.float32)[:, None] * inverse[None]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


def rope(x):
    """Rotate-half rotary embedding of (B, T, H, d) at positions 0..T-1, base 10000."""
    half = x.shape[-1] // 2
    frequencies = 1.0 / (10000.0 ** (np.arange(0, x.shape[-1], 2, dtype=np.float32) / x.shape[-1]))
    angle = jnp.arange(x.shape[1], dtype=jnp.float32)[:, None] * frequencies  # (T, d / 2)
    cos, sin = (jnp.concatenate([f(angle)] * 2, axis=-1)[None, :, None] for f in (jnp.cos, jnp.sin))
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _conv(features, kernel, stride, name, groups=1, padding=1, use_bias=True):
    return nn.Conv(
        features,
        (kernel,),
        (stride,),
        ((padding, padding),),
        feature_group_count=groups,
        use_bias=use_bias,
        precision="highest",
        kernel_init=nn.with_logical_partitioning(default_kernel_init, (None, "conv_in", "embed")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name=name,
    )


class ResidualAttentionBlock(nn.Module):
    """x + attention(LN x) [+ FSMN memory, version 2], then x + MLP(LN x)."""

    config: S3Config

    @nn.compact
    def __call__(self, x, valid):
        c = self.config
        b, t, d = x.shape
        h = c.n_audio_head
        dense = lambda n, name, bias=True: Dense(n, ("embed", "heads"), bias, name=name)  # noqa: E731
        y = LayerNorm(1e-5, name="attn_ln")(x)
        q = dense(d, "attn_query")(y).reshape(b, t, h, d // h)
        k = dense(d, "attn_key", False)(y).reshape(b, t, h, d // h)
        v = dense(d, "attn_value")(y)
        if c.version == 2:
            q, k = rope(q), rope(k)
        mask = valid[:, None, None, :]
        out = dot_product_attention(q, k, v.reshape(b, t, h, d // h), mask=mask).reshape(b, t, d)
        out = Dense(d, ("heads", "embed"), name="attn_out")(out)
        if c.version == 2:  # the FSMN memory of the masked values
            frame = valid[..., None]
            masked = v * frame
            pad = (c.fsmn_kernel - 1) // 2
            memory = _conv(d, c.fsmn_kernel, 1, "attn_fsmn_block", groups=d, padding=pad, use_bias=False)(masked)
            out = out + (memory + masked) * frame
        x = x + out
        y = LayerNorm(1e-5, name="mlp_ln")(x)
        y = gelu(Dense(4 * d, ("embed", "mlp"), name="mlp_0")(y))
        return x + Dense(d, ("mlp", "embed"), name="mlp_2")(y)


class S3Tokenizer(nn.Module):
    """`hidden` (the encoder's frames), `quantize` (tokens); inputs are log-mels (B, T, n_mels)
    with frame counts (B,)."""

    config: S3Config
    remat: bool = False

    def setup(self):
        c = self.config
        self.encoder_conv1 = _conv(c.n_audio_state, 3, c.conv1_stride, None)
        self.encoder_conv2 = _conv(c.n_audio_state, 3, 2, None)
        block = nn.remat(ResidualAttentionBlock) if self.remat else ResidualAttentionBlock
        self.encoder_blocks = repeated(block, c.n_audio_layer)(c)
        if c.version == 1:
            d = c.n_audio_state
            table = lambda: jnp.asarray(sinusoids(c.n_audio_ctx, d))  # noqa: E731
            self.positional_embedding = self.variable("state", "positional_embedding", table)
            self.codebook = self.variable("state", "codebook", jnp.zeros, (c.n_codebook_size, d), jnp.float32)
        else:
            self.project_down = Dense(c.fsq_dims, ("embed", None))

    def hidden(self, mel, mel_len):
        """(B, T', n_audio_state) encoder frames and their counts (B,)."""
        c = self.config
        x, length = mel, mel_len
        for conv, stride in ((self.encoder_conv1, c.conv1_stride), (self.encoder_conv2, 2)):
            x = x * (jnp.arange(x.shape[1])[None] < length[:, None])[..., None]
            x = gelu(conv(x))
            length = (length - 1) // stride + 1
        valid = jnp.arange(x.shape[1])[None] < length[:, None]
        if c.version == 1:
            if x.shape[1] > c.n_audio_ctx:
                raise ValueError(f"{x.shape[1]} frames: the sinusoid table has {c.n_audio_ctx} (30 s of speech)")
            x = x + self.positional_embedding.value[: x.shape[1]]
        x, _ = self.encoder_blocks(x, valid)
        return x, length

    def quantize(self, mel, mel_len):
        """Tokens (B, T') int32 and their counts (B,)."""
        x, length = self.hidden(mel, mel_len)
        if self.config.version == 1:
            x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
            codebook = self.codebook.value
            distance = (
                jnp.sum(x**2, -1, keepdims=True)
                - 2 * jnp.einsum("btd,kd->btk", x, codebook, precision="highest")
                + jnp.sum(codebook**2, -1)
            )
            return jnp.argmin(distance, axis=-1).astype(jnp.int32), length
        return quantization.fsq(self.project_down(x))[1], length

    def __call__(self, mel, mel_len):
        return self.quantize(mel, mel_len)


def tokenize(model: S3Tokenizer, variables, audio, lengths):
    """Tokens (B, N) int32 and counts (B,) of padded 16 kHz audio (B, L) with lengths (B,), as the
    package's quantize: a row of more than 30 s (WINDOW mel frames) is cut into windows every 26 s
    (STRIDE) while one starts before its end, each window tokenized alone, and their tokens
    joined, dropping the first 2 s of every window but the first and the last 2 s of every one but
    the row's last. A shorter row is one window. Shapes are static: the padded length decides how
    many windows every row is given; a row's windows past its own are empty."""
    mel, frames = log_mel_spectrogram(audio, lengths, model.config.n_mels)
    b, t, n_mels = mel.shape
    if t <= WINDOW:
        return model.apply(variables, mel, frames, method="quantize")
    starts = np.arange(-(-t // STRIDE)) * STRIDE
    pieces = jnp.stack(
        [jnp.pad(mel[:, s : s + WINDOW], ((0, 0), (0, max(s + WINDOW - t, 0)), (0, 0))) for s in starts], 1
    )
    used = jnp.where(frames > WINDOW, -(-frames // STRIDE), 1)  # the row's windows
    window = jnp.arange(len(starts))[None]
    piece_frames = jnp.where(window < used[:, None], jnp.clip(frames[:, None] - starts[None], 0, WINDOW), 0)
    codes, counts = model.apply(
        variables, pieces.reshape(-1, WINDOW, n_mels), piece_frames.reshape(-1), method="quantize"
    )
    codes, counts = codes.reshape(b, len(starts), -1), counts.reshape(b, len(starts))
    margin = MARGIN_SECONDS * round(model.config.token_rate)
    segments = []
    for w in range(len(starts)):
        head = 0 if w == 0 else margin
        end = jnp.where(w == used - 1, counts[:, w], counts[:, w] - margin)
        segments.append((codes[:, w, head:], jnp.maximum(end - head, 0)))
    return ragged_concat(segments, 0)


def config(name: str, **overrides) -> S3Config:
    """A named configuration, fields overridden; an unknown name or field is an error listing the valid ones."""
    return named_config(CONFIGS, name, "s3tokenizer", **overrides)


def example_inputs(cfg: S3Config, frames: int = 8):
    return jnp.zeros((1, frames, cfg.n_mels)), jnp.array([frames])


def init_shapes(cfg: S3Config):
    return jax.eval_shape(lambda: S3Tokenizer(cfg).init(jax.random.key(0), *example_inputs(cfg)))


def param_count(cfg: S3Config) -> int:
    return variants.param_count(S3Tokenizer(cfg), *example_inputs(cfg))


_BUFFERS = {
    "encoder.positional_embedding": ("state", "positional_embedding"),
    "quantizer._codebook.embed": ("state", "codebook"),
}


def _path(key: str, value: np.ndarray):
    """An upstream key outside the blocks -> (Flax path, value in Flax layout)."""
    if key in _BUFFERS:
        return _BUFFERS[key], value
    path, value = layer_path(key.replace("quantizer._codebook.project_down", "project_down"), value)
    return ("params", *path), value


def from_torch(state_dict, cfg: S3Config):
    """{"params": ..., "state": ...} of an S3Tokenizer from the package's state_dict (the
    released model as `s3tokenizer.load_model` converts it). A key, layer or shape that does
    not fit is an error listing them."""
    converted, paths, stacks = {}, {}, {}
    for key, value in state_dict.items():
        value = np.asarray(value)
        if key.startswith("encoder.blocks."):
            index, _, rest = key.removeprefix("encoder.blocks.").partition(".")
            path, value = layer_path(rest, value)
            stack = stacks.setdefault(f"encoder.blocks.*.{rest}", (("params", "encoder_blocks", *path), {}))
            stack[1][int(index)] = value
        else:
            paths[key], converted[key] = _path(key, value)
    for key, (path, by_index) in stacks.items():
        converted[key], paths[key] = stack_layers(key, by_index, cfg.n_audio_layer), path
    return assign_state_dict(converted, nn.unbox(init_shapes(cfg)), lambda key, value: (paths[key], value))


def load(path: str, name: str = "speech_tokenizer_v1"):
    """(model, variables) of a converted release (`.pt` / `.safetensors` of the package's
    state_dict) of the named configuration."""
    cfg = config(name)
    return S3Tokenizer(cfg), from_torch(load_state_dict(path), cfg)
