"""Makes tests/data/hift_reference.npz: CosyVoice's HiFTGenerator (the official repository's
cosyvoice/hifigan/generator.py and f0_predictor.py, which need only torch, numpy and scipy),
narrowed, with random weights, on random mel frames.

    git clone https://github.com/FunAudioLLM/CosyVoice /tmp/CosyVoice   # read at ace7c47
    PYTHONPATH=/tmp/CosyVoice python tests/data/make_hift_reference.py

Two cases: "sinegen" at 22.05 kHz (upstream's SineGen, as CosyVoice-300M) with the fundamental
alone, and "sinegen2" at 24 kHz (SineGen2, as CosyVoice2) with two harmonics, whose initial
phases its frame-rate integration drops. The F0 predictor's bias puts every frame above the
voicing threshold and the voiced noise is off, so that the whole waveform is deterministic.
The "sinegen" state_dict keeps weight norm's parametrizations names, "sinegen2" the older
weight_g / weight_v ones (the released hift.pt files have either). Each case holds its config
(JSON, HiFTConfig's fields), the state_dict under "<case>/sd/", the mel (B, bins, T), the F0
(B, T), the source (B, 1, L) and the waveform (B, L).
"""

import json
import os

import numpy as np
import torch
from cosyvoice.hifigan.f0_predictor import ConvRNNF0Predictor
from cosyvoice.hifigan.generator import HiFTGenerator

CASES = {
    "sinegen": dict(
        sample_rate=22050,
        nb_harmonics=0,
        upsample_rates=[4, 2],
        upsample_kernel_sizes=[8, 4],
        source_resblock_kernel_sizes=[3, 5],
        source_resblock_dilation_sizes=[[1, 3], [1, 3]],
    ),
    "sinegen2": dict(
        sample_rate=24000,
        nb_harmonics=2,
        upsample_rates=[4, 3, 2],
        upsample_kernel_sizes=[8, 7, 4],
        source_resblock_kernel_sizes=[3, 3, 5],
        source_resblock_dilation_sizes=[[1, 3], [1, 3], [1, 3]],
    ),
}
COMMON = dict(
    in_channels=8,
    base_channels=16,
    sine_amp=0.1,
    noise_std=0.0,
    voiced_threshold=10.0,
    n_fft=16,
    hop_length=4,
    resblock_kernel_sizes=[3, 5],
    resblock_dilation_sizes=[[1, 3], [1, 3]],
    lrelu_slope=0.1,
    audio_limit=0.99,
    f0_channels=16,
)


def build(c):
    model = HiFTGenerator(
        in_channels=c["in_channels"],
        base_channels=c["base_channels"],
        nb_harmonics=c["nb_harmonics"],
        sampling_rate=c["sample_rate"],
        nsf_alpha=c["sine_amp"],
        nsf_sigma=c["noise_std"],
        nsf_voiced_threshold=c["voiced_threshold"],
        upsample_rates=c["upsample_rates"],
        upsample_kernel_sizes=c["upsample_kernel_sizes"],
        istft_params={"n_fft": c["n_fft"], "hop_len": c["hop_length"]},
        resblock_kernel_sizes=c["resblock_kernel_sizes"],
        resblock_dilation_sizes=c["resblock_dilation_sizes"],
        source_resblock_kernel_sizes=c["source_resblock_kernel_sizes"],
        source_resblock_dilation_sizes=c["source_resblock_dilation_sizes"],
        lrelu_slope=c["lrelu_slope"],
        audio_limit=c["audio_limit"],
        f0_predictor=ConvRNNF0Predictor(1, c["in_channels"], c["f0_channels"]),
    )
    return model.eval()


def main():
    torch.manual_seed(0)
    out = {}
    for case, args in CASES.items():
        c = {**COMMON, **args}
        model = build(c)
        with torch.no_grad():
            for name, p in model.named_parameters():
                positive = name.endswith(("original0", "alpha"))  # weight norm's g, Snake's alpha
                p.copy_(0.5 + 0.3 * torch.rand_like(p) if positive else 0.2 * torch.randn_like(p))
            model.f0_predictor.classifier.bias.fill_(300.0)  # voiced everywhere
        mel = torch.randn(2, c["in_channels"], 12)
        with torch.no_grad():
            f0 = model.f0_predictor(mel)
            y, source = model.inference(mel)
        assert (f0 > c["voiced_threshold"]).all()
        sd = {k: v.numpy() for k, v in model.state_dict().items()}
        if case == "sinegen2":
            sd = {
                k.replace("parametrizations.weight.original0", "weight_g").replace(
                    "parametrizations.weight.original1", "weight_v"
                ): v
                for k, v in sd.items()
            }
        out[f"{case}/config"] = np.array(json.dumps(c))
        out.update({f"{case}/sd/{k}": v for k, v in sd.items()})
        out.update({f"{case}/mel": mel.numpy(), f"{case}/f0": f0.numpy(), f"{case}/source": source.numpy()})
        out[f"{case}/y"] = y.numpy()
    path = os.path.join(os.path.dirname(__file__), "hift_reference.npz")
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
