"""Writes tests/data/sensevoice_rich.json: FunASR's SenseVoiceSmall.inference (the official
model.py from a clone of FunAudioLLM/SenseVoice, funasr stubbed) on a small random-weight
model with the published vocabulary (25,055 tokens, the SentencePiece model of
tests/helpers/sensevoice_release.py) and 560-wide features: its rich output strings for three
utterances, with language auto, en and zh, with and without use_itn and ban_emo_unk.
The weights and features are drawn from seeds (tests/helpers/sensevoice_release.py), so the
file holds only the strings.

    python tests/data/make_sensevoice_rich_reference.py --reference <clone of FunAudioLLM/SenseVoice>
"""

import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from helpers import sensevoice_release  # noqa: E402

ENCODER = dict(output_size=32, attention_heads=4, linear_units=64, num_blocks=3, tp_blocks=2, kernel_size=11)
LENGTHS = [20, 14, 9]
CASES = [("auto", False, False), ("en", True, False), ("zh", False, True)]  # language, use_itn, ban_emo_unk


def features():
    """(feats (3, 20, 560), lengths): what the model reads after fbank, LFR and CMVN."""
    feats = np.random.default_rng(1).standard_normal((len(LENGTHS), max(LENGTHS), 560)).astype(np.float32)
    for b, n in enumerate(LENGTHS):
        feats[b, n:] = 0.0
    return feats, np.array(LENGTHS)


class Tokenizer:
    def __init__(self, path):
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor(model_file=path)

    def decode(self, ids):
        return self.sp.DecodeIds(ids)


def main():
    import torch  # here: the tests import features() without torch
    from make_sensevoice_reference import official_sensevoice

    net = official_sensevoice(__doc__.splitlines()[0], ENCODER, 560, sensevoice_release.VOCAB_SIZE)
    shapes = {k: list(v.shape) for k, v in net.state_dict().items()}
    net.load_state_dict({k: torch.from_numpy(v) for k, v in sensevoice_release.random_weights(shapes).items()})
    feats, lengths = features()
    with torch.no_grad():
        hidden, _ = net.encoder(torch.tensor(feats), torch.tensor(lengths))  # copies: it scales them in place
    center = torch.cat([hidden[b, :n] for b, n in enumerate(LENGTHS)]).mean(0).tolist()
    weights = sensevoice_release.random_weights(shapes, center)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    spm_path = os.path.join(tempfile.mkdtemp(), "sensevoice.model")
    sensevoice_release.build(spm_path)
    texts = {}
    with torch.no_grad():
        for language, use_itn, ban in CASES:
            results, _ = net.inference(
                torch.tensor(feats),
                torch.tensor(lengths),  # inference adds the prompts to it in place
                key=["a", "b", "c"],
                tokenizer=Tokenizer(spm_path),
                data_type="fbank",
                device="cpu",
                language=language,
                use_itn=use_itn,
                ban_emo_unk=ban,
            )
            texts[f"{language},{use_itn},{ban}"] = [r["text"] for r in results]
    out = {"encoder_conf": ENCODER, "center": center, "shapes": shapes, "texts": texts}
    with open(os.path.join(os.path.dirname(__file__), "sensevoice_rich.json"), "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
