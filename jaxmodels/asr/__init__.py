"""Speech recognition: the front end (filterbank, low frame rate, CMVN, SpecAugment) and
SenseVoice-Small's SAN-M + CTC recogniser, with named configs."""

from jaxmodels.asr.convert import from_torch, infer_config
from jaxmodels.asr.frontend import (
    apply_cmvn,
    degrade,
    fbank,
    low_frame_rate,
    mel_banks,
    mfcc,
    read_am_mvn,
    spec_augment,
)
from jaxmodels.asr.model import (
    LANGUAGE_QUERY,
    NUM_PROMPTS,
    TEXTNORM_QUERY,
    EncoderLayerSANM,
    MultiHeadedAttentionSANM,
    SenseVoiceEncoderSmall,
    SenseVoiceSmall,
    sinusoidal_positions,
)
from jaxmodels.asr.rich import ctc_viterbi, funasr_timestamps, parse_rich, rich_greedy
from jaxmodels.asr.segment import segments
from jaxmodels.nn import variants

# SenseVoice-Small as published (the model's config.yaml: SAN-M encoder 50 + 20 layers,
# 512 wide, 4 heads, FFN 2048, FSMN kernel 11; 80 mel bins x LFR 7 = 560 inputs;
# 25,055 sentencepiece tokens): 233,999,167 parameters.
VARIANTS = {
    "sensevoice_small": dict(
        vocab_size=25055,
        input_size=560,
        encoder_conf=dict(
            output_size=512,
            attention_heads=4,
            linear_units=2048,
            num_blocks=50,
            tp_blocks=20,
            kernel_size=11,
            sanm_shift=0,
            dropout_rate=0.1,
            attention_dropout_rate=0.1,
        ),
    ),
}


def create(name: str, **overrides) -> SenseVoiceSmall:
    """A named config, with SenseVoiceSmall arguments (and encoder_conf entries) overridden."""
    if name not in VARIANTS:
        raise ValueError(f"unknown recogniser config {name!r}; valid: {', '.join(VARIANTS)}")
    if "encoder_conf" in overrides:
        encoder_valid = set(SenseVoiceEncoderSmall.__dataclass_fields__) - {"parent", "name", "dtype", "remat"}
        bad = set(overrides["encoder_conf"] or {}) - encoder_valid
        if bad:
            raise ValueError(f"unknown encoder_conf key(s) {sorted(bad)}; valid: {sorted(encoder_valid)}")
        overrides = {**overrides, "encoder_conf": {**VARIANTS[name]["encoder_conf"], **overrides["encoder_conf"]}}
    return variants.create(SenseVoiceSmall, VARIANTS, name, **overrides)


def param_count(model: SenseVoiceSmall) -> int:
    """As upstream's sum(p.numel() for p in model.parameters())."""
    import jax.numpy as jnp

    return variants.param_count(model, jnp.zeros((1, 8, model.input_size)), jnp.full((1,), 8))


__all__ = [
    "LANGUAGE_QUERY",
    "NUM_PROMPTS",
    "TEXTNORM_QUERY",
    "VARIANTS",
    "EncoderLayerSANM",
    "MultiHeadedAttentionSANM",
    "SenseVoiceEncoderSmall",
    "SenseVoiceSmall",
    "apply_cmvn",
    "create",
    "degrade",
    "fbank",
    "mfcc",
    "from_torch",
    "infer_config",
    "low_frame_rate",
    "mel_banks",
    "param_count",
    "sinusoidal_positions",
    "ctc_viterbi",
    "funasr_timestamps",
    "parse_rich",
    "read_am_mvn",
    "rich_greedy",
    "segments",
    "spec_augment",
]
