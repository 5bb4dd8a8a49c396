"""Speech token LMs: VALL-E's AR and NAR models, a MusicGen-style delayed multi-codebook LM,
their cached decoding and sampling, and k-means semantic tokens.

Named configs (`create(name, **overrides)`), with their parameter counts (`param_count`):

  valle_ar        VALL-E AR: 12 layers, width 1024, 16 heads, FFN 4096; 512 text tokens,
                  1024 codes (+EOS, BOS)                                  153,781,248
  valle_nar       VALL-E NAR: the same stack with AdaLN on 7 stages, 8 codebooks
                  of 1024 (its 25 AdaLN projections are 52.5M of it)     219,896,832
  audiolm_stage   an AudioLM stage (§5.1): 12 layers, width 1024, 16 heads, FFN 4096;
                  with 1024 units or codes per codebook: semantic 153,254,912, coarse
                  (4 codebooks) 160,594,944, fine (8 after 4) 172,129,280
  musicgen_small  MusicGen-small's LM: 24 layers, width 1024, 16 heads, FFN 4096, no
                  biases, 4 codebooks of 2048, 256 prefix tokens           319,133,696

The VALL-E and AudioLM papers publish sizes, not counts. MusicGen's paper calls its small
model 300M; audiocraft's small LM is this stack (302.1M in the 24 blocks, plus 16.8M of
code embeddings and heads) with cross-attention to T5 features in every block, which
here is a bidirectional token prefix instead.
"""

from jaxmodels.nn import variants
from jaxmodels.speechlm.audiolm import StageLM
from jaxmodels.speechlm.delay import DelayedLM, delay_codes, delayed_training_inputs, generate_delayed, undelay_codes
from jaxmodels.speechlm.kmeans import assign, fit, kmeans_plus_plus, minibatch_update, tokenize
from jaxmodels.speechlm.sampling import sample_logits
from jaxmodels.speechlm.transformer import Transformer
from jaxmodels.speechlm.valle import (
    VALLEAR,
    VALLENAR,
    advance_targets,
    ar_training_inputs,
    generate_ar,
    generate_nar,
    text_words,
    word_progress,
)

_VALLE = dict(
    d_model=1024, nhead=16, num_layers=12, dim_feedforward=4096, dropout=0.1, codebook_size=1024, text_vocab_size=512
)
VARIANTS = {
    "valle_ar": (VALLEAR, _VALLE),
    "valle_nar": (VALLENAR, {**_VALLE, "num_quantizers": 8}),
    # AudioLM's stages (§5.1), each: bins, codebooks and the prefix's come from the data.
    "audiolm_stage": (StageLM, dict(num_layers=12, num_heads=16, dim=1024, ffn_dim=4096, dropout=0.1, bins=1024)),
    "musicgen_small": (
        DelayedLM,
        dict(dim=1024, num_heads=16, num_layers=24, hidden_scale=4, num_codebooks=4, codebook_size=2048, bias=False),
    ),
}


def create(name: str, **overrides):
    """A named config's module, with constructor arguments overridden."""
    if name not in VARIANTS:
        raise ValueError(f"unknown speech LM {name!r}; valid: {', '.join(VARIANTS)}")
    cls, args = VARIANTS[name]
    return variants.create(cls, {name: args}, name, **overrides)


def param_count(model) -> int:
    args, kwargs = model.example()
    return variants.param_count(model, *args, **kwargs)


__all__ = [
    "DelayedLM",
    "StageLM",
    "Transformer",
    "VALLEAR",
    "VALLENAR",
    "VARIANTS",
    "advance_targets",
    "ar_training_inputs",
    "assign",
    "create",
    "delay_codes",
    "delayed_training_inputs",
    "fit",
    "generate_ar",
    "generate_delayed",
    "generate_nar",
    "kmeans_plus_plus",
    "minibatch_update",
    "param_count",
    "sample_logits",
    "text_words",
    "tokenize",
    "undelay_codes",
    "word_progress",
]
