"""MambaOut: the named variants, `create`, and the official-checkpoint converter."""

from jaxmodels.mambaout.convert import from_torch
from jaxmodels.mambaout.model import GatedCNNBlock, MambaOut
from jaxmodels.nn import variants

# Upstream's registered variants (models/mambaout.py) and the stochastic-depth rate of
# each one's published ImageNet recipe (scripts/train_*.sh).
VARIANTS = {
    "mambaout_femto": dict(depths=(3, 3, 9, 3), dims=(48, 96, 192, 288)),
    "mambaout_kobe": dict(depths=(3, 3, 15, 3), dims=(48, 96, 192, 288)),
    "mambaout_tiny": dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 576)),
    "mambaout_small": dict(depths=(3, 4, 27, 3), dims=(96, 192, 384, 576)),
    "mambaout_base": dict(depths=(3, 4, 27, 3), dims=(128, 256, 512, 768)),
}
PAPER_DROP_PATH = {
    "mambaout_femto": 0.025,
    "mambaout_kobe": 0.025,
    "mambaout_tiny": 0.2,
    "mambaout_small": 0.4,
    "mambaout_base": 0.6,
}


def create(name: str, **overrides) -> MambaOut:
    """A named variant (``mambaout_tiny`` ...), with constructor arguments overridden."""
    return variants.create(MambaOut, VARIANTS, name, **overrides)


__all__ = ["MambaOut", "GatedCNNBlock", "VARIANTS", "PAPER_DROP_PATH", "create", "from_torch"]
