"""CosyVoice (Du et al. 2024; CosyVoice 2): its supervised semantic speech tokenizers (S3), its
text-to-token LMs (CosyVoice-300M's, and CosyVoice 2's over Qwen2) and their text ids, its
flow-matching decoder and the conditional flow matching that trains and samples it, its HiFT
vocoder, the Transformer encoders the LM and the flow share, CAM++, the speaker embedder of its
x-vectors, and the pipeline that speaks with them."""

from jaxmodels.cosyvoice import (
    campplus,
    encoder,
    flow,
    flow_matching,
    hift,
    llm,
    pipeline,
    qwen2,
    s3tokenizer,
    text,
)

__all__ = [
    "campplus",
    "encoder",
    "flow",
    "flow_matching",
    "hift",
    "llm",
    "pipeline",
    "qwen2",
    "s3tokenizer",
    "text",
]
