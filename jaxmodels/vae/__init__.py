"""Stable Diffusion's VAE (AutoencoderKL): the published config, `create`, parameter count, converters."""

from jaxmodels.nn import variants
from jaxmodels.vae.convert import from_torch, ldm_to_diffusers
from jaxmodels.vae.model import AutoencoderKL

# stabilityai/sd-vae-ft-ema and sd-vae-ft-mse (the decoders fine-tuned from SD's kl-f8
# autoencoder; the VAE of DiT's sample.py) share this config: 83,653,863 parameters.
VARIANTS = {
    "sd-vae-ft-ema": {},
    "sd-vae-ft-mse": {},
}
SCALING_FACTOR = 0.18215  # latents for diffusion = posterior sample x this (DiT's train.py and sample.py)


def create(name: str, **overrides) -> AutoencoderKL:
    """A named config (``sd-vae-ft-ema`` ...), with constructor arguments overridden."""
    return variants.create(AutoencoderKL, VARIANTS, name, **overrides)


def param_count(model: AutoencoderKL) -> int:
    import jax.numpy as jnp

    size = 2 ** (len(model.block_out_channels) - 1)
    return variants.param_count(model, jnp.zeros((1, size, size, model.in_channels)))


__all__ = ["SCALING_FACTOR", "VARIANTS", "AutoencoderKL", "create", "from_torch", "ldm_to_diffusers", "param_count"]
