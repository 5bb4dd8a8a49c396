"""Makes tests/data/s3tokenizer_reference.npz: the `s3tokenizer` package's ports of CosyVoice's
speech tokenizers (S3Tokenizer for speech_tokenizer_v1 and v1_25hz, S3TokenizerV2 for
speech_tokenizer_v2_25hz), narrowed (128 wide, two heads of 64, two blocks, 256 codewords
and a 200-row sinusoid table for v1), with random weights.

    pip install torch einops && pip install --no-deps s3tokenizer==0.3.0
    python tests/data/make_s3tokenizer_reference.py

onnx, torchaudio and tqdm, which the package imports but which only its downloads and
file reading use, are stood in for when missing.

The file holds, for two utterances (2.0 s and 1.5 s of noise shaped by a moving resonance):
the waveforms ("audio", zero-padded; "audio_len"), the package's log-mels of each alone,
padded ("mel", (B, T, 128) channels-last; "mel_len"), and for each model ("v1", "v1_25hz",
"v2"): its config (JSON, S3Config's fields), its state_dict under "<model>/sd/" (half precision;
v1_25hz has v1's), the encoder's
frames of the padded batch ("<model>/hidden", (B, T', D)), their counts and the tokens
("<model>/codes", "<model>/codes_len"). And for a batch of 53 s and 3 s ("long/audio", int16
steps; "long/audio_len"), the tokens of the package's long-audio path (30 s windows every 26 s) of v1
with a 1500-row table (30 s; "long/v1/codes", "long/v1/codes_len": v1's weights otherwise) and
of v2 ("long/v2/...").
"""

import importlib
import json
import sys
from types import ModuleType

import numpy as np
import torch


def _stand_ins():
    for name in ("onnx", "torchaudio", "tqdm"):
        try:
            importlib.import_module(name)
        except ImportError:
            module = ModuleType(name)
            module.tqdm = object
            sys.modules[name] = module


_stand_ins()

import s3tokenizer  # noqa: E402
from s3tokenizer.model import ModelConfig as ConfigV1  # noqa: E402
from s3tokenizer.model import S3Tokenizer  # noqa: E402
from s3tokenizer.model_v2 import ModelConfig as ConfigV2  # noqa: E402
from s3tokenizer.model_v2 import S3TokenizerV2  # noqa: E402

WIDTH = dict(n_mels=128, n_audio_ctx=200, n_audio_state=128, n_audio_head=2, n_audio_layer=2)


def randomise(model):
    """Every weight drawn afresh, norm scales near one, so that no block is an identity; the
    values half-precision numbers (the file stores them so), the codewords of unit length
    (upstream compares them with unit-length frames; random lengths would decide alone)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_((1 if name.endswith("ln.weight") else 0) + 0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)
        if getattr(model.quantizer._codebook, "embed", None) is not None:
            embed = torch.randn_like(model.quantizer._codebook.embed)
            model.quantizer._codebook.embed.copy_(embed / embed.norm(dim=1, keepdim=True))
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.copy_(p.half().float())
    return model.eval()


def utterance(seconds, rng):
    """Noise through a resonance that moves: a spectrum with structure, unlike white noise."""
    n = int(16000 * seconds)
    noise = rng.standard_normal(n)
    centre = 300 + 2000 * (0.5 + 0.5 * np.sin(np.arange(n) / 4000))
    phase = np.cumsum(2 * np.pi * centre / 16000)
    return (0.1 * noise * (1 + np.sin(phase))).astype(np.float32)


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    waves = [utterance(2.0, rng), utterance(1.5, rng)]
    mels = [s3tokenizer.log_mel_spectrogram(torch.from_numpy(w)) for w in waves]
    mel, mel_len = s3tokenizer.padding(mels)
    audio = np.zeros((2, len(waves[0])), np.float32)
    for i, w in enumerate(waves):
        audio[i, : len(w)] = w
    out = {
        "audio": audio,
        "audio_len": np.array([len(w) for w in waves], np.int32),
        "mel": mel.transpose(1, 2).numpy(),
        "mel_len": mel_len.numpy(),
    }
    v1 = randomise(S3Tokenizer("speech_tokenizer_v1", ConfigV1(n_codebook_size=256, **WIDTH)))
    v1_25hz = S3Tokenizer("speech_tokenizer_v1_25hz", ConfigV1(n_codebook_size=256, **WIDTH)).eval()
    v1_25hz.load_state_dict(v1.state_dict())  # the same weights: "v1_25hz" has no "sd/" of its own
    models = {
        "v1": (v1, dict(n_codebook_size=256)),
        "v1_25hz": (v1_25hz, dict(n_codebook_size=256, conv1_stride=2)),
        "v2": (
            randomise(S3TokenizerV2("speech_tokenizer_v2_25hz", ConfigV2(**WIDTH))),
            dict(version=2, conv1_stride=2),
        ),
    }
    for name, (model, fields) in models.items():
        with torch.inference_mode():
            hidden, hidden_len = model.encoder(mel, mel_len)
            codes, codes_len = model.quantize(mel, mel_len)
        config = {**WIDTH, "n_codebook_size": 3**8, **fields}
        out[f"{name}/config"] = np.array(json.dumps(config))
        if name != "v1_25hz":
            out.update({f"{name}/sd/{k}": v.numpy().astype(np.float16) for k, v in model.state_dict().items()})
        out[f"{name}/hidden"] = hidden.numpy()
        out[f"{name}/hidden_len"] = hidden_len.numpy()
        out[f"{name}/codes"] = codes.numpy().astype(np.int32)
        out[f"{name}/codes_len"] = codes_len.numpy()
        distinct = len(np.unique(out[f"{name}/codes"]))
        print(f"{name}: codes {out[f'{name}/codes'].shape}, {distinct} distinct")
    # On 16-bit steps, stored as int16 (a third of the file otherwise).
    waves = [(np.round(utterance(s, rng) * 32768) / 32768).astype(np.float32) for s in (53.0, 3.0)]
    mels = [s3tokenizer.log_mel_spectrogram(torch.from_numpy(w)) for w in waves]
    mel, mel_len = s3tokenizer.padding(mels)
    out["long/audio"] = np.stack([np.pad(w, (0, len(waves[0]) - len(w))) * 32768 for w in waves]).astype(np.int16)
    out["long/audio_len"] = np.array([len(w) for w in waves], np.int32)
    v1_30s = S3Tokenizer("speech_tokenizer_v1", ConfigV1(n_codebook_size=256, **{**WIDTH, "n_audio_ctx": 1500}))
    weights = {k: v for k, v in v1.state_dict().items() if k != "encoder.positional_embedding"}
    v1_30s.load_state_dict(weights, strict=False)
    for name, model in (("v1", v1_30s.eval()), ("v2", models["v2"][0])):
        with torch.inference_mode():
            codes, codes_len = model.quantize(mel, mel_len)
        out[f"long/{name}/codes"] = codes.numpy().astype(np.int32)
        out[f"long/{name}/codes_len"] = codes_len.numpy()
        print(f"long {name}: codes {codes.shape}, lengths {codes_len.tolist()}")
    path = "tests/data/s3tokenizer_reference.npz"
    np.savez_compressed(path, **out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
