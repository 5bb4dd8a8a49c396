"""Makes tests/data/campplus_reference.npz: 3D-Speaker's CAM++ (speakerlab/models/campplus,
the 192-wide model CosyVoice's x-vectors come from) with random weights and BatchNorm
statistics, on CosyVoice's frontend features of two utterances.

    git clone https://github.com/modelscope/3D-Speaker /tmp/3D-Speaker         # read at 09e7806
    pip download torchaudio==2.11.1 --no-deps && unzip torchaudio-2.11.1-*.whl 'torchaudio/compliance/kaldi.py'
    PYTHONPATH=/tmp/3D-Speaker python tests/data/make_campplus_reference.py torchaudio/compliance/kaldi.py

torchaudio's Kaldi fbank is loaded from its source file alone (its own module needs only torch
for fbank), so the torch build need not match torchaudio's. Each utterance goes through
CosyVoice's frontend as _extract_spk_embedding does: kaldi.fbank(wav, num_mel_bins=80,
dither=0, sample_frequency=16000), less its mean over time, then the model, one at a time.

The file holds the state_dict under "sd/" (a narrowed model: growth 8, bottlenecks of 16,
32 channels after the TDNN layer; and the published model's parameter count "count_192"), the waveforms
("wav", zero-padded, with "lengths"), the features ("feats/<i>") and the embeddings
("embedding/<i>") of each utterance.
"""

import importlib.util
import sys
import types

import numpy as np
import torch

LENGTHS = (37_000, 16_160)  # 2.3 s and 1.0 s: 229 and 99 frames, 115 and 50 after the TDNN layer


def load_kaldi(path):
    sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))  # used by its mfcc only
    spec = importlib.util.spec_from_file_location("kaldi", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def randomise(model, generator):
    """Random weights at unit gain, and BatchNorm parameters and statistics away from (1, 0, 0, 1),
    so that every part counts."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                if m.affine:
                    m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=generator))
                    m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=generator))
                # The embedding's own BatchNorm (no affine part) gets small statistics: with large
                # ones its mean would dominate every utterance's embedding alike.
                size = 0.3 if m.affine else 0.01
                m.running_mean.copy_(size * torch.randn(m.running_mean.shape, generator=generator))
                m.running_var.copy_(size * (0.5 + torch.rand(m.running_var.shape, generator=generator)))
            elif isinstance(m, torch.nn.Conv1d | torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) / fan_in**0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=generator))


def main():
    from speakerlab.models.campplus.DTDNN import CAMPPlus

    kaldi = load_kaldi(sys.argv[1])
    torch.manual_seed(0)
    count = sum(p.numel() for p in CAMPPlus(feat_dim=80, embedding_size=192).parameters())

    # Narrowed: the published structure (its 52 dense layers) at growth 8 instead of 32.
    model = CAMPPlus(feat_dim=80, embedding_size=192, growth_rate=8, bn_size=2, init_channels=32)
    randomise(model, torch.Generator().manual_seed(1))
    model.eval()

    rng = np.random.default_rng(0)
    wav = np.zeros((len(LENGTHS), max(LENGTHS)), np.float32)
    t = np.arange(max(LENGTHS)) / 16000
    for i, n in enumerate(LENGTHS):
        voice = 0.3 * np.sin(2 * np.pi * (120 + 40 * i) * t[:n] * (1 + 0.2 * np.sin(3 * t[:n])))
        wav[i, :n] = voice + 0.02 * rng.standard_normal(n)
    out = {f"sd/{k}": v.numpy() for k, v in model.state_dict().items()}
    out.update(wav=wav, lengths=np.array(LENGTHS), count_192=np.array(count))
    with torch.no_grad():
        for i, n in enumerate(LENGTHS):
            feat = kaldi.fbank(torch.from_numpy(wav[i : i + 1, :n]), num_mel_bins=80, dither=0, sample_frequency=16000)
            feat = feat - feat.mean(dim=0, keepdim=True)
            out[f"feats/{i}"] = feat.numpy()
            out[f"embedding/{i}"] = model(feat[None]).numpy()[0]
    np.savez_compressed("tests/data/campplus_reference.npz", **out)
    print({k: v.shape for k, v in out.items() if not k.startswith("sd/")}, "published parameters:", count)


if __name__ == "__main__":
    main()
