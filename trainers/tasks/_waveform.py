"""What the tasks that generate waveforms (codec, hift, the TTS LMs) share: fixed-length crops
of a speech corpus's audio, the mean of per-example losses over the batch's real rows, and the
eval utterances and spoken pairs a person listens to."""

import json
import os

import jax.numpy as jnp
import numpy as np

from trainers import files
from trainers.data import speech


class AudioCrop:
    """Manifest record -> mono audio of a fixed length: a random crop in training, the start
    at eval (padded with zeros), with the number of real samples; with ``features`` (an
    ExtractedFrames of the split), the teacher's frames of the crop, which starts on a frame."""

    def __init__(self, cfg, sample_rate: int, length: int, train: bool, hop: int = 1, features=None):
        self.sample_rate, self.length, self.train = sample_rate, length, train
        self.on_bad_audio, self.resample = cfg.data.on_bad_audio, cfg.data.resample
        self.hop, self.features = hop, features

    def __call__(self, record, rng):
        audio = np.zeros(self.length, np.float32)
        out = {"audio": audio, "audio_length": np.int32(0), "mask": np.float32(0.0)}
        frames = self.length // self.hop
        if self.features is not None:
            out["semantic"] = np.zeros((frames, self.features.width()), np.float32)
            out["semantic_frames"] = np.int32(0)
        try:
            samples = speech.read_audio(record["source"], self.sample_rate, self.resample)
        except ValueError:
            if self.on_bad_audio == "skip":
                return out
            raise
        start = 0
        if self.train and len(samples) > self.length:
            start = int(rng.integers(0, (len(samples) - self.length) // self.hop + 1)) * self.hop
        piece = samples[start : start + self.length]
        audio[: len(piece)] = piece
        out.update(audio_length=np.int32(len(piece)), mask=np.float32(1.0))
        if self.features is not None:
            teacher = self.features[record["key"]][start // self.hop :][:frames]
            out["semantic"][: len(teacher)] = teacher
            out["semantic_frames"] = np.int32(len(teacher))  # the teacher's count may differ by a frame
        return out


def masked_mean(values, mask):
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def eval_examples(task, n: int):
    """(audio (n', T), lengths (n',)) of the first n eval utterances, as the eval transform crops them."""
    source = task.eval_source()
    records = [task.eval_transform(source[i], None) for i in range(min(n, len(source)))]
    return np.stack([r["audio"] for r in records]), np.array([r["audio_length"] for r in records])


def write_examples(workdir, outputs, names, sample_rate: int, spectrogram, step):
    """outputs["examples_<name>"] (B, T) cut to outputs["examples_length"] as audio/<i>_<name>.wav,
    and spectrogram(wav) (frames, bins) of each in spectrograms.png."""
    from trainers.pictures import spectrograms_png

    folder = os.path.join(workdir, "audio")
    os.makedirs(folder, exist_ok=True)
    rows = []
    for i, length in enumerate(outputs["examples_length"]):
        for name in names:
            wav = np.asarray(outputs[f"examples_{name}"][i][:length])
            speech.write_wav(os.path.join(folder, f"{i}_{name}.wav"), np.clip(wav, -1, 1), sample_rate)
            rows.append((f"utterance {i}, {name}", np.asarray(spectrogram(wav))))
    spectrograms_png(os.path.join(workdir, "spectrograms.png"), rows, title=f"step {step}")
    print(f"wrote {folder}/*.wav and {os.path.join(workdir, 'spectrograms.png')}")


def write_spoken(workdir, outputs, step):
    """Zero-shot TTS pairs spoken at eval (outputs tts_text and the 16 kHz tts_prompt,
    tts_reference, tts_generated): the first eight as tts/<i>_<name>.wav, their log-mel
    spectrograms in tts_spectrograms.png, the sentences in tts/texts.json."""
    from jaxmodels.codec import losses
    from trainers.pictures import spectrograms_png

    if "tts_generated" not in outputs:
        return
    folder = os.path.join(workdir, "tts")
    os.makedirs(folder, exist_ok=True)
    rows = []
    for i, text in enumerate(outputs["tts_text"][:8]):
        for name in ("prompt", "reference", "generated"):
            wav = np.asarray(outputs[f"tts_{name}"][i], np.float32)
            speech.write_wav(os.path.join(folder, f"{i}_{name}.wav"), np.clip(wav, -1, 1))
            log_mel = losses.mel_spectrogram(jnp.asarray(wav)[None, :, None], speech.SAMPLE_RATE, 512, 160, 400, 64)
            rows.append((f"{i} {name}" + (f": {text}" if name != "prompt" else ""), np.asarray(log_mel[0, 0])))
    files.write_text(os.path.join(folder, "texts.json"), json.dumps(outputs["tts_text"], indent=1))
    spectrograms_png(os.path.join(workdir, "tts_spectrograms.png"), rows, title=f"step {step}")
    print(f"wrote {folder}/*.wav and {os.path.join(workdir, 'tts_spectrograms.png')}")
