"""Speech recognition: the front end (filterbank, low frame rate, CMVN, SpecAugment) and
SenseVoice-Small's SAN-M + CTC recogniser, with named configs."""

from jaxmodels.asr.convert import from_torch, infer_config
from jaxmodels.asr.frontend import apply_cmvn, degrade, fbank, low_frame_rate, mel_banks, spec_augment
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
    kwargs = {**VARIANTS[name], **overrides}
    valid = set(SenseVoiceSmall.__dataclass_fields__) - {"parent", "name"}
    unknown = set(kwargs) - valid
    if unknown:
        raise ValueError(f"unknown SenseVoiceSmall argument(s) {sorted(unknown)}; valid: {sorted(valid)}")
    encoder_valid = set(SenseVoiceEncoderSmall.__dataclass_fields__) - {"parent", "name", "dtype", "remat"}
    bad = set(kwargs.get("encoder_conf") or {}) - encoder_valid
    if bad:
        raise ValueError(f"unknown encoder_conf key(s) {sorted(bad)}; valid: {sorted(encoder_valid)}")
    if "encoder_conf" in overrides:
        kwargs["encoder_conf"] = {**VARIANTS[name]["encoder_conf"], **overrides["encoder_conf"]}
    return SenseVoiceSmall(**kwargs)


def param_count(model: SenseVoiceSmall) -> int:
    """As upstream's sum(p.numel() for p in model.parameters())."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    feats = jnp.zeros((1, 8, model.input_size))
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), feats, jnp.full((1,), 8)))
    return sum(leaf.size for leaf in jax.tree.leaves(nn.meta.unbox(shapes["params"])))


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
    "from_torch",
    "infer_config",
    "low_frame_rate",
    "mel_banks",
    "param_count",
    "sinusoidal_positions",
    "spec_augment",
]
