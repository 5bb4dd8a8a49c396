"""Speech codecs: EnCodec (SEANet encoder/decoder around a residual vector quantizer) and
SpeechTokenizer (the same with a bidirectional encoder LSTM and a semantic projection), their
official configs, converter, streaming, and the discriminators (EnCodec's MS-STFT, HiFi-GAN's
multi-period and multi-scale) and losses they train with."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.codec import quantization, speechtokenizer
from jaxmodels.codec.convert import from_torch
from jaxmodels.codec.model import Codec, Encodec, EncodecConfig, StreamingDecoder, StreamingEncoder, linear_overlap_add
from jaxmodels.codec.seanet import SLSTM, SConv1d, SConvTranspose1d, SEANetDecoder, SEANetEncoder, SEANetResnetBlock

# The published models (encodec/model.py: encodec_model_24khz, encodec_model_48khz):
# 14,851,810 and 14,856,294 parameters; n_q = 1000 x max bandwidth // (frame rate x 10).
VARIANTS = {
    "encodec_24khz": dict(
        sample_rate=24000,
        channels=1,
        causal=True,
        norm="weight_norm",
        normalize=False,
        segment=None,
        n_q=32,
        bins=1024,
        target_bandwidths=(1.5, 3.0, 6.0, 12.0, 24.0),
    ),
    "encodec_48khz": dict(
        sample_rate=48000,
        channels=2,
        causal=False,
        norm="time_group_norm",
        normalize=True,
        segment=1.0,
        n_q=16,
        bins=1024,
        target_bandwidths=(3.0, 6.0, 12.0, 24.0),
    ),
}
# SpeechTokenizer's released models (fnlp/SpeechTokenizer): 16 kHz, 8 codebooks at 50 Hz.
VARIANTS["speechtokenizer_hubert_avg"] = dataclasses.asdict(speechtokenizer.encodec_config(speechtokenizer.RELEASED))
VARIANTS["speechtokenizer_snake"] = {**VARIANTS["speechtokenizer_hubert_avg"], "activation": "Snake"}


def config(name: str, **overrides) -> EncodecConfig:
    """A named config with EncodecConfig fields overridden."""
    if name not in VARIANTS:
        raise ValueError(f"unknown codec config {name!r}; valid: {', '.join(VARIANTS)}")
    return EncodecConfig.from_dict({**VARIANTS[name], **overrides})


def create(name: str, seed: int = 0, **overrides) -> Codec:
    """A freshly initialised codec of a named config (random weights, k-means-pending codebooks)."""
    return create_from_config(config(name, **overrides), seed)


def create_from_config(cfg: EncodecConfig, seed: int = 0) -> Codec:
    """A freshly initialised codec of a config (random weights, k-means-pending codebooks)."""
    k_params, k_codes = jax.random.split(jax.random.PRNGKey(seed))
    model = Encodec(cfg)
    x = jnp.zeros((1, cfg.hop_length * 8, cfg.channels))
    params = nn.meta.unbox(jax.jit(model.init)(k_params, x)["params"])
    codebooks = quantization.init_state(k_codes, cfg.n_q, cfg.bins, cfg.dimension, cfg.kmeans_init)
    return Codec(cfg, {"params": params, "codebooks": codebooks})


__all__ = [
    "VARIANTS",
    "Codec",
    "Encodec",
    "EncodecConfig",
    "SConv1d",
    "SConvTranspose1d",
    "SEANetDecoder",
    "SEANetEncoder",
    "SEANetResnetBlock",
    "SLSTM",
    "StreamingDecoder",
    "StreamingEncoder",
    "config",
    "create",
    "create_from_config",
    "from_torch",
    "linear_overlap_add",
    "quantization",
    "speechtokenizer",
]
