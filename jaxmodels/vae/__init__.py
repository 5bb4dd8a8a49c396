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


# The keys of diffusers' config.json that this model takes (the rest are fixed by its structure).
CONFIG_KEYS = (
    "in_channels",
    "out_channels",
    "latent_channels",
    "block_out_channels",
    "layers_per_block",
    "norm_num_groups",
    "scaling_factor",
)


def load_pretrained(path: str) -> tuple:
    """(model, variables) of a VAE weights file: diffusers' (diffusion_pytorch_model.safetensors
    or .bin) or the original .ckpt. The config.json diffusers keeps beside the weights, where
    there is one, gives the architecture and scaling_factor; else sd-vae-ft-ema's."""
    import json
    import os

    from jaxmodels.nn import load_state_dict

    overrides = {}
    config_path = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if os.path.isfile(config_path):
        with open(config_path) as f:
            config = json.load(f)
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in CONFIG_KEYS}
    model = create("sd-vae-ft-ema", **overrides)
    return model, from_torch(load_state_dict(path), model)


def param_count(model: AutoencoderKL) -> int:
    import jax.numpy as jnp

    size = 2 ** (len(model.block_out_channels) - 1)
    return variants.param_count(model, jnp.zeros((1, size, size, model.in_channels)))


__all__ = [
    "SCALING_FACTOR",
    "VARIANTS",
    "AutoencoderKL",
    "create",
    "from_torch",
    "ldm_to_diffusers",
    "load_pretrained",
    "param_count",
]
