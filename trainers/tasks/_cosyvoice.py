"""What CosyVoice's LM and flow tasks share: a speech corpus with the S3 tokens and x-vectors that
trainers.extract wrote of it, looked up per utterance."""

from dataclasses import dataclass

from trainers.config import ConfigError
from trainers.data.extracted import ExtractedFrames
from trainers.data.speech import AudioDataConfig


@dataclass
class CosyVoiceDataConfig(AudioDataConfig):
    """A speech corpus with what trainers.extract wrote of it (folders holding <split>/)."""

    tokens: str = ""  # S3 tokens: python -m trainers.extract s3tokens
    xvectors: str = ""  # speaker embeddings: python -m trainers.extract xvectors


def extracted(cfg, split: str, vocab: int, token_rate: float | None = None, xvectors: bool = True):
    """(tokens, xvectors): the split's ExtractedFrames, the tokens checked to be S3 tokens of the
    model's vocabulary (and rate, when it reads them at one); xvectors None where not asked for."""
    d = cfg.data
    for key, kind in (("tokens", "s3tokens"), ("xvectors", "xvectors"))[: 2 if xvectors else 1]:
        if not getattr(d, key):
            raise ConfigError(f"data.{key}: give the folder of python -m trainers.extract {kind}")
    tokens = ExtractedFrames(f"{d.tokens}/{split}")
    xvectors = ExtractedFrames(f"{d.xvectors}/{split}") if xvectors else None
    if tokens.what != "units" or tokens.meta.get("clusters") != vocab:
        raise ConfigError(
            f"data.tokens: {d.tokens} holds {tokens.what} of {tokens.meta.get('clusters')} codes; model "
            f"{cfg.model.name} reads S3 tokens of {vocab}"
        )
    if token_rate is not None and tokens.frame_rate != token_rate:
        raise ConfigError(
            f"data.tokens: {d.tokens} holds tokens at {tokens.frame_rate} Hz; model {cfg.model.name} reads them "
            f"at {token_rate} Hz"
        )
    return tokens, xvectors


def xvector(xvectors, key: str, width: int):
    """The utterance's x-vector (width,), checked against the model's width."""
    value = xvectors[key][0]
    if value.shape != (width,):
        raise ConfigError(f"data.xvectors: {value.shape[0]}-wide x-vectors; the model's spk_embed_dim is {width}")
    return value
