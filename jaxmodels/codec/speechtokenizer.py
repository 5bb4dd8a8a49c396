"""SpeechTokenizer (Zhang et al., ICLR 2024; ZhangXInFD/SpeechTokenizer, speechtokenizer/model.py):
EnCodec's SEANet codec with a bidirectional encoder LSTM and an RVQ of 8 x 1024 codes at 50 Hz
(16 kHz audio) whose first layer is distilled from HuBERT, plus the projection of that layer's
output to the teacher's width. It is an EnCodec config with two more fields (``bidirectional``,
``semantic_dimension``), so the codec family trains, converts and compresses it; this module
gives it upstream's interface:

    from jaxmodels.codec import speechtokenizer
    st = speechtokenizer.from_torch(state_dict, config)  # config: the released config.json (dict or path)
    codes = st.encode(wav)                # (B, n_q, frames); st.encode(wav, n_q=1): the semantic layer
    wav = st.decode(codes)                # (B, frames x 320, 1)
    feature = st.semantic_features(wav)   # (B, frames, semantic_dimension)
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.codec import quantization
from jaxmodels.codec.convert import from_torch as codec_from_torch
from jaxmodels.codec.model import Codec, Encodec, EncodecConfig

# The model's keys in the released speechtokenizer_hubert_avg/config.json, with its values; the
# rest of that file is training settings (losses, optimiser, data).
RELEASED = {
    "n_filters": 64,
    "strides": [8, 5, 4, 2],
    "dimension": 1024,
    "semantic_dimension": 768,
    "bidirectional": True,
    "dilation_base": 2,
    "residual_kernel_size": 3,
    "n_residual_layers": 1,
    "lstm_layers": 2,
    "activation": "ELU",
    "codebook_size": 1024,
    "n_q": 8,
    "sample_rate": 16000,
}


def encodec_config(release) -> EncodecConfig:
    """The EncodecConfig of a SpeechTokenizer config.json (its dict or path): upstream's SEANet
    defaults (non-causal, weight norm, reflect padding, kernels 7), activation ELU
    (speechtokenizer_hubert_avg) or Snake (speechtokenizer_snake), and one target bandwidth per
    number of quantizers (0.5 kbps each at 50 Hz)."""
    if isinstance(release, str | os.PathLike):
        with open(release) as f:
            release = json.load(f)
    missing = [k for k in RELEASED if k not in release]
    if missing:
        raise ValueError(f"not a SpeechTokenizer config: it lacks {missing}")
    sample_rate, strides, bins = release["sample_rate"], tuple(release["strides"]), release["codebook_size"]
    per_quantizer = quantization.bandwidth_per_quantizer(bins, math.ceil(sample_rate / np.prod(strides))) / 1000
    return EncodecConfig(
        sample_rate=sample_rate,
        channels=1,
        dimension=release["dimension"],
        n_filters=release["n_filters"],
        n_residual_layers=release["n_residual_layers"],
        ratios=strides,
        residual_kernel_size=release["residual_kernel_size"],
        dilation_base=release["dilation_base"],
        causal=False,
        lstm=release["lstm_layers"],
        activation=release["activation"],
        bidirectional=release["bidirectional"],
        n_q=release["n_q"],
        bins=bins,
        target_bandwidths=tuple(k * per_quantizer for k in range(1, release["n_q"] + 1)),
        semantic_dimension=release["semantic_dimension"],
    )


class SpeechTokenizer:
    """A ready SpeechTokenizer: upstream's encode / decode / feature interface over a Codec
    (``.codec``, which ``trainers.compress`` and the codec task use). Waveforms are
    channels-last (B, T, 1); codes are (B, n_q, frames) as upstream's transposed (n_q, B, frames)."""

    def __init__(self, codec: Codec):
        if not codec.config.semantic_dimension:
            raise ValueError("a SpeechTokenizer needs a codec with a semantic projection (semantic_dimension)")
        self.codec = codec
        self.config = codec.config
        self._encode = jax.jit(self._codes, static_argnums=2)
        self._decode = jax.jit(self._audio)

    def _codes(self, params, wav, n_q):
        emb = self.codec.model.apply({"params": params}, wav, method=Encodec.encode_latent)
        return quantization.encode(self.codec.codebooks["embed"], emb, n_q).transpose(1, 0, 2)

    def _audio(self, params, codes):
        emb = quantization.decode(self.codec.codebooks["embed"], codes.transpose(1, 0, 2))
        return self.codec.model.apply({"params": params}, emb, method=Encodec.decode_latent)

    def param_count(self) -> int:
        return self.codec.param_count()

    def encode(self, wav, n_q: int | None = None):
        """Codes (B, n_q, frames) of the first n_q quantizers (default: all) of wav (B, T, 1)."""
        n_q = self.config.n_q if n_q is None else n_q
        if not 1 <= n_q <= self.config.n_q:
            raise ValueError(f"n_q={n_q}: this model has quantizers 1 to {self.config.n_q}")
        self.codec._check(wav)
        return self._encode(self.codec.params, jnp.asarray(wav), n_q)

    def decode(self, codes):
        """Waveform (B, frames x hop, 1) of codes (B, K, frames) of the first K quantizers."""
        codes = jnp.asarray(codes)
        if codes.ndim != 3 or not 1 <= codes.shape[1] <= self.config.n_q:
            raise ValueError(f"expected codes (batch, 1 to {self.config.n_q} quantizers, frames), got {codes.shape}")
        return self._decode(self.codec.params, codes)

    def semantic_features(self, wav):
        """The first quantizer's output through the projection, (B, frames, semantic_dimension)."""
        return self.codec.semantic_features(wav)


def from_torch(state_dict, config) -> SpeechTokenizer:
    """A SpeechTokenizer from upstream's state_dict (SpeechTokenizer.pt) and config.json (dict or path)."""
    return SpeechTokenizer(codec_from_torch(state_dict, encodec_config(config)))


def load(weights: str, config: str | None = None) -> SpeechTokenizer:
    """The released model from its files: SpeechTokenizer.pt (or .safetensors) and the config.json
    beside it unless ``config`` names one."""
    from jaxmodels.nn import load_state_dict

    config = config or os.path.join(os.path.dirname(os.path.abspath(weights)), "config.json")
    if not os.path.isfile(config):
        raise FileNotFoundError(f"{weights}: no config.json beside it; name the model's with config=")
    return from_torch(load_state_dict(weights), config)


def create(seed: int = 0, **overrides) -> SpeechTokenizer:
    """The released architecture (RELEASED, keys overridden) with random weights and
    k-means-pending codebooks."""
    from jaxmodels.codec import create_from_config

    return SpeechTokenizer(create_from_config(encodec_config({**RELEASED, **overrides}), seed))
