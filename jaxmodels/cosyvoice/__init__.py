"""CosyVoice (Du et al. 2024): its HiFT vocoder."""

from jaxmodels.cosyvoice import hift

__all__ = ["hift"]
