"""Writes tests/data/sensevoice_funasr.json: FunASR's own pipeline, from audio to text (the
funasr package: WavFrontend with dither 0 and an am.mvn, SenseVoiceSmall.inference, the
SentencepiecesTokenizer), on the small random-weight SenseVoice of sensevoice_rich.json and
the release files of tests/helpers/sensevoice_release.py: the rich output of three
recordings, with the language auto, en and zh, with and without use_itn and ban_emo_unk,
and the times of its words (output_timestamp). FunASR's timestamps index the decoded text's
pieces by aligned label and fail when there are more labels (each piece is encoded again,
and pieces can give two ids each: FunASR issue 2637); the pieces are read here with the
workaround given there, an empty piece past the last.

    python tests/data/make_sensevoice_funasr_reference.py     # needs funasr, torch and torchaudio
"""

import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from helpers import sensevoice_release  # noqa: E402

HERE = os.path.dirname(__file__)
SAMPLE_RATE = 16000
CASES = [("auto", False, False), ("en", True, False), ("zh", False, True)]  # language, use_itn, ban_emo_unk


def recordings() -> list:
    """Three 16-bit recordings at 16 kHz (int16 arrays): a chirp, bursts of noise, a chord of
    two tones; FunASR reads a WAV of them as these values / 32768."""
    rng = np.random.default_rng(2)
    t = np.arange(int(1.2 * SAMPLE_RATE)) / SAMPLE_RATE
    chirp = 0.4 * np.sin(2 * np.pi * (150 + 1500 * t) * t)
    bursts = 0.002 * rng.standard_normal(int(0.9 * SAMPLE_RATE))
    bursts[3000:7000] += 0.2 * rng.standard_normal(4000)
    t = np.arange(int(0.7 * SAMPLE_RATE)) / SAMPLE_RATE
    chord = 0.2 * np.sin(2 * np.pi * 330 * t) + 0.2 * np.sin(2 * np.pi * 440 * t)
    return [np.round(w * 32768).astype(np.int16) for w in (chirp, bursts, chord)]


def am_mvn_stats():
    """(mean, inverse_std) of the am.mvn the reference and the test both use."""
    rng = np.random.default_rng(3)
    return rng.normal(12.0, 1.0, 560), rng.uniform(0.2, 0.3, 560)


def main():
    import torch
    from funasr.frontends.wav_frontend import WavFrontend
    from funasr.models.sense_voice.model import SenseVoiceSmall
    from funasr.tokenizer.sentencepiece_tokenizer import SentencepiecesTokenizer

    with open(os.path.join(HERE, "sensevoice_rich.json")) as f:
        rich = json.load(f)
    folder = tempfile.mkdtemp()
    sensevoice_release.build(os.path.join(folder, "bpe.model"))
    sensevoice_release.write_am_mvn(os.path.join(folder, "am.mvn"), *am_mvn_stats())
    conf = {**rich["encoder_conf"], "sanm_shfit": 0, "dropout_rate": 0.0, "attention_dropout_rate": 0.0}
    conf["positional_dropout_rate"] = 0.0
    model = SenseVoiceSmall(
        encoder="SenseVoiceEncoderSmall",
        encoder_conf=conf,
        input_size=560,
        vocab_size=sensevoice_release.VOCAB_SIZE,
    ).eval()
    weights = sensevoice_release.random_weights(rich["shapes"], rich["center"])
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    frontend = WavFrontend(
        cmvn_file=os.path.join(folder, "am.mvn"),
        fs=SAMPLE_RATE,
        window="hamming",
        n_mels=80,
        frame_length=25,
        frame_shift=10,
        lfr_m=7,
        lfr_n=6,
        dither=0.0,
    )

    class Pieces(list):
        def __getitem__(self, index):
            if isinstance(index, slice):
                return Pieces(super().__getitem__(index))
            return super().__getitem__(index) if index < len(self) else ""

    class Tokenizer(SentencepiecesTokenizer):
        def text2tokens(self, line):
            return Pieces(super().text2tokens(line))

    tokenizer = Tokenizer(bpemodel=os.path.join(folder, "bpe.model"))
    texts, timestamps = {}, {}

    def inference(language, use_itn, ban, **options):
        results, _ = model.inference(
            [(pcm / 32768.0).astype(np.float32) for pcm in recordings()],
            key=["a", "b", "c"],
            tokenizer=tokenizer,
            frontend=frontend,
            device="cpu",
            language=language,
            use_itn=use_itn,
            ban_emo_unk=ban,
            **options,
        )
        return results

    with torch.no_grad():
        for case in CASES:
            texts[",".join(map(str, case))] = [r["text"] for r in inference(*case)]
            timestamped = inference(*case, output_timestamp=True)
            timestamps[",".join(map(str, case))] = [[r.get("timestamp"), r.get("words")] for r in timestamped]
    with open(os.path.join(HERE, "sensevoice_funasr.json"), "w") as f:
        json.dump({"texts": texts, "timestamps": timestamps}, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
