"""DiT's evaluation networks on the same inputs: the SD VAE's decoder (jaxmodels.vae
against diffusers' AutoencoderKL) and FID's Inception-v3 features (jaxmodels.inception
against pytorch-fid's InceptionV3), both at published size with the same random weights
(the torch models' state_dicts through the converters). Prints images/s of each and the
ratio, float32.

    python -m venv /tmp/fid && /tmp/fid/bin/pip install pytorch-fid diffusers -e .
    /tmp/fid/bin/python benchmarks/vae_inception.py [--batch 4 --iters 3]
"""

import argparse
import os
import sys

import jax
import numpy as np
import torch

from jaxmodels import inception, vae

sys.path.insert(0, os.path.dirname(__file__))
from common import time_it  # noqa: E402


def vae_decode(batch, iters):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    reference = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
    ).eval()
    model = vae.create("sd-vae-ft-ema")
    variables = vae.from_torch({k: v.numpy() for k, v in reference.state_dict().items()}, model)
    latents = np.random.default_rng(0).standard_normal((batch, 32, 32, 4)).astype(np.float32)
    decode = jax.jit(lambda v, z: model.apply(v, z, method="decode"))
    ours = time_it(lambda: decode(variables, latents).block_until_ready(), iters)
    z = torch.from_numpy(latents.transpose(0, 3, 1, 2))
    with torch.no_grad():
        theirs = time_it(lambda: reference.decode(z).sample, iters)
    return ours, theirs


def inception_features(batch, iters):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "data"))
    from make_inception_reference import pytorch_fid_model

    reference, torchvision_model = pytorch_fid_model()
    reference.eval()
    state_dict = {k: v.numpy() for k, v in torchvision_model.state_dict().items()}
    net = inception.create()
    variables = inception.from_torch(state_dict, net)
    images = np.random.default_rng(0).uniform(0, 1, (batch, 256, 256, 3)).astype(np.float32)
    features = jax.jit(net.apply)
    ours = time_it(lambda: features(variables, images)["pool"].block_until_ready(), iters)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2))
    with torch.no_grad():
        theirs = time_it(lambda: reference(x), iters)
    return ours, theirs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    print(f"jax {jax.__version__} ({jax.devices()[0].device_kind}), torch {torch.__version__}, batch {args.batch}")
    work = (("VAE decode 32x32x4 -> 256x256", vae_decode), ("Inception features 256 -> 299", inception_features))
    for name, fn in work:
        ours, theirs = fn(args.batch, args.iters)
        print(
            f"{name}: jax {args.batch / ours:.2f} images/s, torch {args.batch / theirs:.2f} images/s, "
            f"torch/jax time {theirs / ours:.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
