"""CosyVoice (Du et al. 2024): its supervised semantic speech tokenizers (S3), its
text-to-token LM, its flow-matching decoder and the conditional flow matching that trains and
samples it, its HiFT vocoder, and the Transformer encoders the LM and the flow share."""

from jaxmodels.cosyvoice import encoder, flow, flow_matching, hift, llm, s3tokenizer

__all__ = ["encoder", "flow", "flow_matching", "hift", "llm", "s3tokenizer"]
