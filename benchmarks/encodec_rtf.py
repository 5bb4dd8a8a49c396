"""EnCodec 24 kHz encode + decode: this project (JAX) against the official encodec package.

    python benchmarks/encodec_rtf.py --reference encodec/ [--seconds 10 --bandwidth 6 --batch 1]

--reference is a clone of facebookresearch/encodec (the package needs torch and einops;
its torchaudio import, used only for file I/O, is stubbed here). Upstream's
encodec_model_24khz(pretrained=False) gets random weights, which from_torch converts, so
both run the same model on the same waveform. Prints each side's real-time factor
(seconds of compute per second of audio; below 1 is faster than real time), the ratio
(torch / jax: above 1 means JAX is faster) and how many codes differ (float rounding
can flip near-ties between two codebook entries).
"""

import argparse
import os
import sys
import types

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import time_it


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="a clone of facebookresearch/encodec")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--bandwidth", type=float, default=6.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()

    import torch

    sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))
    sys.path.insert(0, args.reference)
    import jax
    from encodec.model import EncodecModel

    import jaxmodels.codec as codec_lib

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    ref = EncodecModel.encodec_model_24khz(pretrained=False).to(device)
    ref.set_target_bandwidth(args.bandwidth)
    codec = codec_lib.from_torch(
        {k: v.detach().cpu().numpy() for k, v in ref.state_dict().items()}, codec_lib.config("encodec_24khz")
    )

    rng = np.random.default_rng(0)
    samples = int(args.seconds * 24000)
    x = (0.1 * rng.standard_normal((args.batch, samples, 1))).astype(np.float32)
    xt = torch.from_numpy(x.transpose(0, 2, 1).copy()).to(device)

    def torch_run():
        with torch.no_grad():
            frames = ref.encode(xt)
            out = ref.decode(frames)
        if device == "cuda":
            torch.cuda.synchronize()
        return frames, out

    def jax_run():
        frames = codec.encode(x, args.bandwidth)
        return frames, jax.block_until_ready(codec.decode(frames))

    t_jax = time_it(jax_run, args.iters)
    t_torch = time_it(torch_run, args.iters)
    ((codes, _),) = jax_run()[0]
    ((ref_codes, _),) = torch_run()[0]
    differ = int((np.asarray(codes) != ref_codes.cpu().numpy()).sum())
    audio = args.seconds * args.batch
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({dev.platform}), torch on {device}, threads {torch.get_num_threads()}")
    print(f"encodec_24khz encode + decode at {args.bandwidth:g} kbps, batch {args.batch} x {args.seconds:g} s")
    print(f"  jax   {t_jax * 1e3:9.1f} ms   real-time factor {t_jax / audio:.4f}")
    print(f"  torch {t_torch * 1e3:9.1f} ms   real-time factor {t_torch / audio:.4f}")
    print(f"  ratio torch/jax: {t_torch / t_jax:.2f}x   codes differing: {differ} of {codes.size}")


if __name__ == "__main__":
    main()
