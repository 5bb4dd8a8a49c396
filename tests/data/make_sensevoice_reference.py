"""Writes tests/data/sensevoice_tiny.npz: the official SenseVoice model.py (from a clone
of FunAudioLLM/SenseVoice; its funasr imports stubbed, none of which the encoder uses)
on random weights, a padded batch and the four prompt queries, for tests/test_asr.py.

    python tests/data/make_sensevoice_reference.py --reference <clone of FunAudioLLM/SenseVoice>
"""

import argparse
import os
import sys
import types

import numpy as np
import torch


class _Tables:
    def __init__(self):
        self.encoder_classes, self.model_classes = {}, {}

    def register(self, kind, name):
        def deco(cls):
            getattr(self, kind)[name] = cls
            return cls

        return deco


class _CTC(torch.nn.Module):
    def __init__(self, odim, encoder_output_size, **kw):
        super().__init__()
        self.ctc_lo = torch.nn.Linear(encoder_output_size, odim)

    def log_softmax(self, hs):  # funasr's CTC.log_softmax
        return torch.nn.functional.log_softmax(self.ctc_lo(hs), dim=2)


class _Loss(torch.nn.Module):
    def __init__(self, **kw):
        super().__init__()


def stub_funasr():
    stubs = {
        "funasr": {},
        "funasr.register": {"tables": _Tables()},
        "funasr.models": {},
        "funasr.models.ctc": {},
        "funasr.models.ctc.ctc": {"CTC": _CTC},
        "funasr.utils": {},
        "funasr.utils.datadir_writer": {"DatadirWriter": None},
        "funasr.models.paraformer": {},
        "funasr.models.paraformer.search": {"Hypothesis": None},
        "funasr.train_utils": {},
        "funasr.train_utils.device_funcs": {"force_gatherable": None},
        "funasr.losses": {},
        "funasr.losses.label_smoothing_loss": {"LabelSmoothingLoss": _Loss},
        "funasr.metrics": {},
        "funasr.metrics.compute_acc": {"compute_accuracy": None, "th_accuracy": None},
        "funasr.utils.load_utils": {"load_audio_text_image_video": None, "extract_fbank": None},
        "utils": {},
        "utils.ctc_alignment": {"ctc_forced_align": None},
    }
    for name, attrs in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module


def official_sensevoice(description: str, encoder_conf: dict, input_size: int, vocab_size: int):
    """SenseVoiceSmall of the official model.py (its clone given as --reference on the command
    line, funasr stubbed), in eval mode, dropout off."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--reference", required=True, help="clone of FunAudioLLM/SenseVoice (its model.py)")
    args = parser.parse_args()
    stub_funasr()
    sys.path.insert(0, args.reference)
    import model as reference

    conf = {**encoder_conf, "sanm_shfit": 0, "dropout_rate": 0.0, "attention_dropout_rate": 0.0}
    net = reference.SenseVoiceSmall(
        encoder="SenseVoiceEncoderSmall",
        encoder_conf={**conf, "positional_dropout_rate": 0.0},
        input_size=input_size,
        vocab_size=vocab_size,
    )
    torch.nn.Module.__init__(net.encoder.embed)  # upstream's position encoder skips it (it has no state)
    return net.eval()


def main():
    torch.manual_seed(0)
    conf = dict(output_size=32, attention_heads=4, linear_units=64, num_blocks=3, tp_blocks=2, kernel_size=11)
    net = official_sensevoice(__doc__.splitlines()[0], conf, input_size=40, vocab_size=30)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # norms and biases away from 1 and 0
    x = torch.randn(2, 17, 40)
    lengths = torch.tensor([17, 11])
    language, textnorm = torch.tensor([3, 0]), torch.tensor([14, 15])  # <|en|>/auto, withitn/woitn rows
    with torch.no_grad():  # upstream's encode() with the queries given (it draws "auto" 20% of the time)
        rows = torch.stack(
            [language, torch.ones(2, dtype=torch.long), 2 * torch.ones(2, dtype=torch.long), textnorm], 1
        )
        encoded, _ = net.encoder(torch.cat([net.embed(rows), x], 1), lengths + 4)
        logits = net.ctc.ctc_lo(encoded)
    out = {f"state/{k}": v.numpy() for k, v in net.state_dict().items()}
    out.update(
        x=x.numpy(),
        lengths=lengths.numpy(),
        language=language.numpy(),
        textnorm=textnorm.numpy(),
        logits=logits.numpy(),
    )
    np.savez_compressed(os.path.join(os.path.dirname(__file__), "sensevoice_tiny.npz"), **out)


if __name__ == "__main__":
    main()
