"""Writes tests/data/fsmn_vad_reference.json: FunASR's FSMN-VAD (the funasr package's
FsmnVADStreaming and WavFrontendOnline, the released model's config) run offline as its
inference does, on random weights drawn by tests/helpers/seeded_weights.py (linear ones
doubled), over four recordings of tone-and-noise "speech" between silences: 6 s, 150 s
(three 60 s chunks), exactly 60 s (an empty last chunk) and near silence. The silence class
is made to follow loudness: the last layer's silence row and bias are fitted (least squares)
for a silence probability of 0.02 on the loud frames of the first recording and 0.95 on the
quiet ones, and am.mvn normalises the recordings' own features. The JSON keeps the weights'
names, shapes, seed and gain, the fitted row, am.mvn's values, the first 600 silence
probabilities of the first recording, and FunASR's segments for four settings.

    python tests/data/make_fsmn_vad_reference.py     # needs funasr, torch and kaldi-native-fbank or torchaudio
"""

import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from helpers import sensevoice_release  # noqa: E402
from helpers.seeded_weights import seeded_state_dict  # noqa: E402

HERE = os.path.dirname(__file__)
SAMPLE_RATE = 16000
ENCODER_CONF = dict(input_dim=400, input_affine_dim=140, fsmn_layers=4, linear_dim=250, proj_dim=128, lorder=20,
                    rorder=0, lstride=1, rstride=0, output_affine_dim=140, output_dim=248)  # fmt: skip
MODEL_CONF = dict(sample_rate=16000, detect_mode=1, snr_mode=0, max_end_silence_time=800, max_start_silence_time=3000,
                  do_start_point_detection=True, do_end_point_detection=True, window_size_ms=200,
                  sil_to_speech_time_thres=150, speech_to_sil_time_thres=150, speech_2_noise_ratio=1.0, do_extend=1,
                  lookback_time_start_point=200, lookahead_time_end_point=100, max_single_segment_time=60000,
                  snr_thres=-100.0, noise_frame_num_used_for_snr=100, decibel_thres=-100.0, speech_noise_thres=0.6,
                  fe_prior_thres=0.0001, silence_pdf_num=1, sil_pdf_ids=[0], speech_noise_thresh_low=-0.1,
                  speech_noise_thresh_high=0.3, output_frame_probs=False, frame_in_ms=10,
                  frame_length_ms=25)  # fmt: skip
FRONTEND_CONF = dict(fs=16000, window="hamming", n_mels=80, frame_length=25, frame_shift=10, dither=0.0, lfr_m=5,
                     lfr_n=1)  # fmt: skip
WEIGHT_GAIN = 2.0
# Settings of FunASR's inference: its defaults (the dynamic end-silence limit), a fixed limit
# (max_end_silence_time given at inference), segments cut at 3 s, and the first segment only.
SETTINGS = {
    "default": {},
    "end_silence_500": {"max_end_silence_time": 500},
    "max_segment_3000": {"max_single_segment_time": 3000},
    "first_only": {"detect_mode": 0},
}


def shapes():
    """FsmnVADStreaming's state_dict names and shapes, in its order."""
    c = ENCODER_CONF
    out = [("encoder.in_linear1.linear.weight", (c["input_affine_dim"], c["input_dim"])),
           ("encoder.in_linear1.linear.bias", (c["input_affine_dim"],)),
           ("encoder.in_linear2.linear.weight", (c["linear_dim"], c["input_affine_dim"])),
           ("encoder.in_linear2.linear.bias", (c["linear_dim"],))]  # fmt: skip
    for i in range(c["fsmn_layers"]):
        out += [(f"encoder.fsmn.{i}.linear.linear.weight", (c["proj_dim"], c["linear_dim"])),
                (f"encoder.fsmn.{i}.fsmn_block.conv_left.weight", (c["proj_dim"], 1, c["lorder"], 1)),
                (f"encoder.fsmn.{i}.affine.linear.weight", (c["linear_dim"], c["proj_dim"])),
                (f"encoder.fsmn.{i}.affine.linear.bias", (c["linear_dim"],))]  # fmt: skip
    return out + [("encoder.out_linear1.linear.weight", (c["output_affine_dim"], c["linear_dim"])),
                  ("encoder.out_linear1.linear.bias", (c["output_affine_dim"],)),
                  ("encoder.out_linear2.linear.weight", (c["output_dim"], c["output_affine_dim"])),
                  ("encoder.out_linear2.linear.bias", (c["output_dim"],))]  # fmt: skip


def seeded_weights():
    """The seeded state_dict with its linear weights doubled: at seeded_weights' gain the
    random network's last hidden state hardly varies with its input."""
    state = seeded_state_dict(shapes(), seed=0)
    return {k: v * WEIGHT_GAIN if v.ndim == 2 else v for k, v in state.items()}


def recordings() -> list:
    """Four float32 recordings at 16 kHz: utterances (tones with harmonics over noise, each
    0.3-4 s, one 70 s long in the second) between silences of 0.05-3 s of faint noise."""
    rng = np.random.default_rng(7)

    def utterance(seconds):
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        f0 = rng.uniform(100, 250) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
        envelope = np.abs(np.sin(2 * np.pi * rng.uniform(2, 5) * t)) ** 0.5
        return 0.2 * envelope * voiced + 0.02 * rng.standard_normal(len(t))

    def silence(seconds):
        return 0.0005 * rng.standard_normal(int(seconds * SAMPLE_RATE))

    def recording(total, long_at=None):
        parts, length, count = [silence(0.4)], 0.4, 0
        while length < total:
            seconds = 70.0 if count == long_at else rng.uniform(0.3, 4.0)
            gap = rng.choice([0.05, 0.2, 0.5, 1.0, 3.0])
            parts += [utterance(seconds), silence(gap)]
            length, count = length + seconds + gap, count + 1
        return np.concatenate(parts)[: int(total * SAMPLE_RATE)].astype(np.float32)

    return [recording(6.0), recording(150.0, long_at=3), recording(60.0), silence(3.0).astype(np.float32)]


def main():
    import torch
    from funasr.frontends.wav_frontend import WavFrontendOnline
    from funasr.models.fsmn_vad_streaming.model import FsmnVADStreaming

    audio = recordings()
    state = seeded_weights()
    model = FsmnVADStreaming(encoder="FSMN", encoder_conf=ENCODER_CONF, **MODEL_CONF).eval()
    folder = tempfile.mkdtemp()
    cmvn = os.path.join(folder, "am.mvn")

    def frontend_features(wav):
        front = WavFrontendOnline(cmvn_file=cmvn, **FRONTEND_CONF)
        feats, _ = front(torch.from_numpy(wav)[None], torch.tensor([len(wav)]), is_final=True, cache={})
        return feats

    # am.mvn: the recordings' own fbank statistics.
    sensevoice_release.write_am_mvn(cmvn, np.zeros(400), np.ones(400))
    raw = torch.cat([frontend_features(w)[0] for w in audio[:2]])
    mean = raw.mean(0).numpy().reshape(5, 80).mean(0)
    inverse_std = 1 / raw.std(0).numpy().reshape(5, 80).mean(0)
    sensevoice_release.write_am_mvn(cmvn, np.tile(mean, 5), np.tile(inverse_std, 5))

    # The silence row: from the loud frames' hidden state towards the quiet ones'.
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    enc = model.encoder
    with torch.no_grad():
        feats = frontend_features(audio[0])
        hidden = enc.out_linear1(enc.fsmn(enc.relu(enc.in_linear2(enc.in_linear1(feats))), None))[0].numpy()
    frames = len(hidden)
    energy = np.array([np.sum(audio[0][t * 160 : t * 160 + 400] ** 2) for t in range(frames)])
    loud = energy > np.median(energy)
    logits = hidden @ state["encoder.out_linear2.linear.weight"].T + state["encoder.out_linear2.linear.bias"]
    others = np.log(np.sum(np.exp(logits[:, 1:]), axis=1))  # the silence probability is sigmoid(l0 - others)
    target = others + np.where(loud, -4.0, 3.0)  # silent with probability 0.02 when loud, 0.95 when quiet
    fit = np.linalg.lstsq(np.concatenate([hidden, np.ones((frames, 1))], axis=1), target, rcond=None)[0]
    row, bias = fit[:-1].astype(np.float32), float(fit[-1])
    state["encoder.out_linear2.linear.weight"][0] = row
    state["encoder.out_linear2.linear.bias"][0] = bias
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})

    with torch.no_grad():
        probs = model.encoder(frontend_features(audio[0]))[0, :600, 0].numpy()
    segments = {}
    for name, kwargs in SETTINGS.items():
        segments[name] = []
        for wav in audio:
            m = model
            if "max_single_segment_time" in kwargs or "detect_mode" in kwargs:
                m = FsmnVADStreaming(encoder="FSMN", encoder_conf=ENCODER_CONF, **{**MODEL_CONF, **kwargs}).eval()
                m.load_state_dict(model.state_dict())
            front = WavFrontendOnline(cmvn_file=cmvn, **FRONTEND_CONF)
            extra = {k: v for k, v in kwargs.items() if k == "max_end_silence_time"}  # an inference argument
            with torch.no_grad():
                result, _ = m.inference([torch.from_numpy(wav)], key=["r"], frontend=front, device="cpu", **extra)
            segments[name].append(result[0]["value"])
    reference = {
        "seed": 0,
        "weight_gain": WEIGHT_GAIN,
        "shapes": [[k, list(s)] for k, s in shapes()],
        "silence_row": row.tolist(),
        "silence_bias": bias,
        "am_mvn": {"mean": mean.tolist(), "inverse_std": inverse_std.tolist()},
        "encoder_conf": ENCODER_CONF,
        "model_conf": MODEL_CONF,
        "frontend_conf": FRONTEND_CONF,
        "settings": SETTINGS,
        "silence_probs": probs.tolist(),
        "segments": segments,
    }
    with open(os.path.join(HERE, "fsmn_vad_reference.json"), "w") as f:
        json.dump(reference, f)
    for name, values in segments.items():
        print(name, [len(v) for v in values], values[0][:4])


if __name__ == "__main__":
    main()
