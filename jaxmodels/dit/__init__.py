"""DiT: the twelve named configs, `create`, parameter and FLOP counts, the checkpoint converter."""

from jaxmodels.dit.convert import from_torch
from jaxmodels.dit.model import DiT, DiTBlock, sincos_pos_embed_2d, timestep_embedding
from jaxmodels.nn import variants

# Upstream's DiT_models (models.py): depth, width, heads by size; patch by suffix.
_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
VARIANTS = {
    f"DiT-{size}/{patch}": dict(depth=d, hidden_size=h, num_heads=n, patch_size=patch)
    for size, (d, h, n) in _SIZES.items()
    for patch in (2, 4, 8)
}


def create(name: str, **overrides) -> DiT:
    """A named config (``DiT-XL/2`` ...), with constructor arguments overridden."""
    return variants.create(DiT, VARIANTS, name, **overrides)


def param_count(model: DiT, trainable_only: bool = False) -> int:
    """Upstream's sum(p.numel() for p in model.parameters()): the fixed pos_embed counts unless trainable_only."""
    import jax.numpy as jnp

    x = jnp.zeros((1, model.input_size, model.input_size, model.in_channels))
    n = variants.param_count(model, x, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
    return n if trainable_only else n + model.num_patches * model.hidden_size


def forward_macs(model: DiT) -> int:
    """Multiply-accumulates of one image's forward pass (the paper's "Gflops" are these / 1e9)."""
    t, d, p, c = model.num_patches, model.hidden_size, model.patch_size, model.in_channels
    m = int(d * model.mlp_ratio)
    block = 6 * d * d + 3 * t * d * d + 2 * t * t * d + t * d * d + 2 * t * d * m
    return t * d * c * p * p + 256 * d + d * d + model.depth * block + 2 * d * d + t * d * p * p * model.out_channels


__all__ = [
    "DiT",
    "DiTBlock",
    "VARIANTS",
    "create",
    "forward_macs",
    "from_torch",
    "param_count",
    "sincos_pos_embed_2d",
    "timestep_embedding",
]
