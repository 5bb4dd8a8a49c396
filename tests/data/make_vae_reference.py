"""Makes tests/data/vae_reference.npz: diffusers' AutoencoderKL, small and with random
weights, on random images and latents (NCHW there, NHWC in the file).

    pip install torch==2.13.0 diffusers
    python tests/data/make_vae_reference.py

The file holds the state_dict (diffusers' keys, under "sd/"), the inputs and the outputs:
the posterior's mean and std, the decoded latents and the reconstruction through the mean.
`diffusers_to_ldm` writes the same weights in the original latent-diffusion layout; this
script checks it against diffusers' own converter (convert_ldm_vae_checkpoint), which
must give back the diffusers state_dict exactly.
"""

import json
import os
import re

import numpy as np

CONFIG = {
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "latent_channels": 4,
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
}
_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def diffusers_to_ldm(state_dict: dict, num_blocks: int) -> dict:
    """diffusers' AutoencoderKL keys -> the original layout (attention projections as 1x1 convs)."""
    out = {}
    for key, value in state_dict.items():
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", key)
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(
            r"^decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{num_blocks - 1 - int(m[1])}.block.", new
        )
        new = re.sub(
            r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda m: f"decoder.up.{num_blocks - 1 - int(m[1])}.upsample.",
            new,
        )
        new = re.sub(r"\.mid_block\.resnets\.(\d)\.", lambda m: f".mid.block_{int(m[1]) + 1}.", new)
        attention = re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)$", new)
        if attention:
            part, name, leaf = attention.groups()
            new = f"{part}.mid.attn_1.{_ATTENTION[name]}.{leaf}"
            if leaf == "weight" and name != "group_norm":
                value = value.reshape(value.shape + (1, 1))
        new = new.replace(".conv_shortcut.", ".nin_shortcut.").replace(".conv_norm_out.", ".norm_out.")
        out[new] = value
    return out


def main():
    import torch
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    torch.manual_seed(0)
    model = AutoencoderKL(**CONFIG).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # norms away from the identity, so the test sees them
            if "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
    state_dict = {k: v.numpy() for k, v in model.state_dict().items()}

    ldm = {k: torch.from_numpy(v) for k, v in diffusers_to_ldm(state_dict, len(CONFIG["block_out_channels"])).items()}
    back = convert_ldm_vae_checkpoint(ldm, {**CONFIG, **model.config})
    assert sorted(back) == sorted(state_dict), set(back) ^ set(state_dict)
    for k, v in back.items():
        np.testing.assert_array_equal(v.numpy().reshape(state_dict[k].shape), state_dict[k], err_msg=k)

    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, 3, 24, 40)).astype(np.float32)
    latents = rng.standard_normal((2, 4, 12, 20)).astype(np.float32)
    with torch.no_grad():
        posterior = model.encode(torch.from_numpy(images)).latent_dist
        decoded = model.decode(torch.from_numpy(latents)).sample
        reconstruction = model(torch.from_numpy(images)).sample
    nhwc = lambda x: np.asarray(x).transpose(0, 2, 3, 1)  # noqa: E731
    np.savez(
        os.path.join(os.path.dirname(__file__), "vae_reference.npz"),
        config=json.dumps(CONFIG),
        images=nhwc(images),
        latents=nhwc(latents),
        mean=nhwc(posterior.mean),
        std=nhwc(posterior.std),
        decoded=nhwc(decoded),
        reconstruction=nhwc(reconstruction),
        **{f"sd/{k}": v for k, v in state_dict.items()},
    )


if __name__ == "__main__":
    main()
