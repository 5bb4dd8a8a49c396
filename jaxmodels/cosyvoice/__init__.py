"""CosyVoice (Du et al. 2024): its supervised semantic speech tokenizers (S3), its
text-to-token LM and its text ids, its flow-matching decoder and the conditional flow matching
that trains and samples it, its HiFT vocoder, the Transformer encoders the LM and the flow
share, and CAM++, the speaker embedder of its x-vectors."""

from jaxmodels.cosyvoice import campplus, encoder, flow, flow_matching, hift, llm, s3tokenizer, text

__all__ = ["campplus", "encoder", "flow", "flow_matching", "hift", "llm", "s3tokenizer", "text"]
