"""Makes tests/data/speechtokenizer_reference.npz: the `speechtokenizer` package's model, small and
with random weights and codebooks, on a random padded batch.

    python -m venv --system-site-packages /tmp/stvenv   # beside torch==2.13.0
    /tmp/stvenv/bin/pip install --no-deps speechtokenizer==1.0.1 einops
    /tmp/stvenv/bin/python tests/data/make_speechtokenizer_reference.py

For each case ("elu", "snake") the file holds the config (JSON), the state_dict (upstream's keys,
under "<case>/sd/"), the waveforms (B, 1, T), and upstream's outputs: encode (all quantizers and
n_q=1, (n_q, B, frames)), decode of all codes, and forward's semantic feature (B, frames,
semantic_dimension). It also holds the parameter counts of the released configurations.
"""

import importlib.util
import json
import os
import sys
import types

import numpy as np

SMALL = {
    "n_filters": 4,
    "strides": [4, 2],
    "dimension": 16,
    "semantic_dimension": 12,
    "bidirectional": True,
    "dilation_base": 2,
    "residual_kernel_size": 3,
    "n_residual_layers": 1,
    "lstm_layers": 2,
    "activation": "ELU",
    "codebook_size": 32,
    "n_q": 3,
    "sample_rate": 16000,
}
RELEASED = {**SMALL, "n_filters": 64, "strides": [8, 5, 4, 2], "dimension": 1024, "semantic_dimension": 768}
RELEASED.update(codebook_size=1024, n_q=8)


def upstream_model_class():
    # The package's __init__ imports its trainer (accelerate, torchaudio, ...); the model needs none of it.
    spec = importlib.util.find_spec("speechtokenizer")
    package = types.ModuleType("speechtokenizer")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["speechtokenizer"] = package
    from speechtokenizer.model import SpeechTokenizer

    return SpeechTokenizer


def main():
    import torch

    model_class = upstream_model_class()
    out = {}
    for activation in ("ELU", "Snake"):
        released = model_class({**RELEASED, "activation": activation})
        out[f"released_{activation.lower()}_param_count"] = sum(p.numel() for p in released.parameters())

    rng = np.random.default_rng(0)
    wav = rng.standard_normal((2, 1, 203)).astype(np.float32) * 0.3
    wav[1, :, 150:] = 0  # a shorter utterance padded with zeros
    for case, activation in (("elu", "ELU"), ("snake", "Snake")):
        torch.manual_seed(0)
        config = {**SMALL, "activation": activation}
        model = model_class(config).eval()
        state = model.state_dict()
        for key in state:
            if key.endswith("_codebook.embed"):
                state[key] = torch.randn(state[key].shape) * 0.5
            elif key.endswith("_codebook.inited"):
                state[key] = torch.ones_like(state[key])
            elif key.endswith(".alpha"):  # Snake's alpha starts at 1; random so that the converter is checked
                state[key] = 0.5 + torch.rand(state[key].shape)
        model.load_state_dict(state)
        with torch.no_grad():
            x = torch.from_numpy(wav)
            codes = model.encode(x)
            first = model.encode(x, n_q=1)
            audio = model.decode(codes)
            _, _, feature = model(x)
        out[f"{case}/config"] = json.dumps(config)
        out[f"{case}/wav"] = wav
        out[f"{case}/codes"] = codes.numpy()
        out[f"{case}/codes_first"] = first.numpy()
        out[f"{case}/audio"] = audio.numpy()
        out[f"{case}/feature"] = feature.numpy()
        for key, value in model.state_dict().items():
            out[f"{case}/sd/{key}"] = value.numpy()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "speechtokenizer_reference.npz")
    np.savez_compressed(path, **out)
    print(f"wrote {path}: {len(out)} arrays; released parameters: ", out["released_elu_param_count"])


if __name__ == "__main__":
    main()
