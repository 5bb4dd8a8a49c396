"""CosyVoice (Du et al. 2024): its HiFT vocoder and the conditional flow matching of its decoder."""

from jaxmodels.cosyvoice import flow_matching, hift

__all__ = ["flow_matching", "hift"]
