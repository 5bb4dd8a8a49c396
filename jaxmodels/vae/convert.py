"""Checkpoints of Stable Diffusion's VAE -> AutoencoderKL variables.

Two layouts: diffusers' (`diffusion_pytorch_model.safetensors` / `.bin`: the module names
this model uses) and the original latent-diffusion one (`vae-ft-ema-560000-ema-pruned.ckpt`,
or a whole SD checkpoint's `first_stage_model.*`), renamed here to diffusers' names: the
resnets `block.j` with `nin_shortcut`, `down.i.downsample`, the decoder's `up` blocks in
reverse order, and the mid-block attention's 1x1-conv q/k/v/proj_out. The training loss's
weights some of those checkpoints carry (`loss.*`: LPIPS and the discriminator) are not the
model's and are left out.
"""

import re

import numpy as np

from jaxmodels.nn.state_dict import assign_state_dict, module_path, torch_to_flax_leaf

_LDM_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def ldm_to_diffusers(state_dict: dict, num_blocks: int) -> dict:
    """Original (latent-diffusion) VAE keys -> diffusers' keys; attention 1x1 convs -> linear weights."""
    prefix = "first_stage_model." if any(k.startswith("first_stage_model.") for k in state_dict) else ""
    out = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix) or key[len(prefix) :].startswith("loss."):
            continue
        new = key[len(prefix) :]
        new = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets.", new)
        new = re.sub(r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", new)
        new = re.sub(
            r"^decoder\.up\.(\d+)\.block\.", lambda m: f"decoder.up_blocks.{num_blocks - 1 - int(m[1])}.resnets.", new
        )
        new = re.sub(
            r"^decoder\.up\.(\d+)\.upsample\.",
            lambda m: f"decoder.up_blocks.{num_blocks - 1 - int(m[1])}.upsamplers.0.",
            new,
        )
        new = re.sub(r"\.mid\.block_(\d)\.", lambda m: f".mid_block.resnets.{int(m[1]) - 1}.", new)
        attention = re.match(r"^(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)$", new)
        if attention:
            part, name, leaf = attention.groups()
            new = f"{part}.mid_block.attentions.0.{_LDM_ATTENTION[name]}.{leaf}"
            if leaf == "weight" and name != "norm":
                value = value.reshape(value.shape[:2])
        new = new.replace(".nin_shortcut.", ".conv_shortcut.").replace(".norm_out.", ".conv_norm_out.")
        out[new] = value
    return out


def from_torch(state_dict: dict, model) -> dict:
    """{"params": ...} of `model` from either layout (told apart by its key names)."""
    import jax
    import jax.numpy as jnp

    if any(".down.0.block." in k or k.startswith("first_stage_model.") for k in state_dict):
        state_dict = ldm_to_diffusers(state_dict, len(model.block_out_channels))
    size = 2 ** (len(model.block_out_channels) - 1)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, model.in_channels)))

    def key_map(key, value):
        path, leaf = module_path(key)
        name, value = torch_to_flax_leaf(leaf, value)
        return path + (name,), value

    from flax import linen as nn

    params = assign_state_dict(state_dict, nn.meta.unbox(shapes["params"]), key_map)
    return {"params": jax.tree.map(np.asarray, params)}
