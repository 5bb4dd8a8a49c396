"""CosyVoice (Du et al. 2024): its HiFT vocoder, its flow-matching decoder and the conditional
flow matching that trains and samples it."""

from jaxmodels.cosyvoice import flow, flow_matching, hift

__all__ = ["flow", "flow_matching", "hift"]
