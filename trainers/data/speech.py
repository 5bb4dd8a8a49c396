"""Speech data: the built-in synthesised corpus, manifests, LibriSpeech, WAV reading.

The built-in corpus is spoken by eSpeak NG (the espeakng-loader wheel carries the
library and its voice data; loaded with ctypes): digit strings ("four two nine one") and
short sentences over a fixed vocabulary ("anna has three red boxes"), each in a voice
made of an English accent, a voice variant, a pitch and a speaking rate, resampled from
22,050 Hz to 16 kHz. Whole voices (accent + variant) are held out for the test split.
It is generated once into a folder and reused. The seed fixes every sentence, voice,
pitch, rate and hence every duration; the samples themselves repeat exactly except for
the breath noise some voice variants add, which eSpeak NG draws from the C library's
rand() (seeded from the clock, out of our reach). The word start times are eSpeak NG's
own word events, exact (the TTS task's word alignment reads them), and so are the phone
start times, from its phoneme events (the unit_quality evaluator scores units against them):

    <path>/train.jsonl, test.jsonl     {"key", "source" (WAV path), "target", "speaker", "voice",
                                        "word_starts": seconds at which each word of target begins,
                                        "phones": [[start (s), phone], ...] (PHONE_SILENCE for pauses
                                        and the end), each phone lasting until the next begins}
    <path>/tts_test.jsonl              the same, plus "prompt_source", "prompt_target": another
                                       sentence of the same speaker (on first use; build_prompt_pairs)
    <path>/wav/<key>.wav               16-bit mono 16 kHz

User data: JSON-lines manifests in the same form (FunASR / SenseVoice style; `source`
relative to the manifest's folder or absolute), or a LibriSpeech folder
(<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt with .flac or .wav beside).
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import re
import threading
import wave
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from trainers import files
from trainers.cli import InputError
from trainers.config import ConfigError, DataConfig
from trainers.progress import progress

SAMPLE_RATE = 16000


@dataclass
class AudioDataConfig(DataConfig):
    """The data section of the audio families."""

    # speech: the built-in corpus, synthesised into path on first use; manifest: a folder of
    # <split>.jsonl; librispeech: the LibriSpeech root (splits are its folders, e.g. train-clean-100,
    # or several joined by "+")
    source: Literal["speech", "manifest", "librispeech"] = "speech"
    on_bad_audio: Literal["error", "skip"] = "error"  # unreadable, empty, wrong rate, too long
    max_seconds: float = 3.0  # audio is padded to this length; longer utterances are bad audio
    # > 0: training batches by duration instead of batch_size: each utterance goes to the
    # shortest bucket that holds it, padded to the bucket's length, and a batch holds as
    # many utterances of one bucket as fit in batch_seconds of padded audio.
    batch_seconds: float = 0.0
    # The buckets' padded lengths, below max_seconds; the longest training utterance is
    # always the last (empty: the octiles of the training durations). One compiled step each.
    bucket_seconds: list[float] = field(default_factory=list)
    resample: bool = False  # audio at another sample rate: resample to 16 kHz instead of an error
    corpus_seed: int = 0  # the built-in corpus
    corpus_train_size: int = 2000
    corpus_test_size: int = 200


NAMES = ["anna", "ben", "carl", "dora", "emma", "frank"]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
COLOURS = ["red", "green", "blue", "black", "white", "yellow"]
THINGS = ["boxes", "cats", "cups", "dogs", "hats", "pens"]
ACCENTS = ["en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc"]
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5"]


def corpus_sentence(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return " ".join(rng.choice(NUMBERS) for _ in range(rng.randint(3, 6)))
    return f"{rng.choice(NAMES)} has {rng.choice(NUMBERS)} {rng.choice(COLOURS)} {rng.choice(THINGS)}"


class _Event(ctypes.Structure):
    """speak_lib.h's espeak_EVENT (its id union as 8 bytes)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_EVENT_LIST_END, _EVENT_WORD, _EVENT_PHONEME = 0, 1, 7
PHONE_SILENCE = "_"


def _phone(mnemonic: bytes) -> str:
    """eSpeak NG's phoneme mnemonic without its stress marks; pauses are PHONE_SILENCE."""
    name = mnemonic.split(b"\0")[0].decode().lstrip("',")
    return PHONE_SILENCE if name.startswith("_") else name


class _ESpeak:
    """eSpeak NG in synchronous mode: text in, 22,050 Hz int16 samples, word and phone start times out."""

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as e:
            raise RuntimeError("the built-in speech corpus needs eSpeak NG: pip install espeakng-loader") from e
        self.lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        data_parent = os.path.dirname(espeakng_loader.get_data_path())
        # 2: AUDIO_OUTPUT_SYNCHRONOUS; options 1: espeakINITIALIZE_PHONEME_EVENTS
        self.sample_rate = self.lib.espeak_Initialize(2, 0, data_parent.encode(), 1)
        if self.sample_rate <= 0:
            raise RuntimeError(f"eSpeak NG failed to initialise with data in {data_parent}")
        self._chunks, self._word_samples, self._phones = [], [], []
        callback_type = ctypes.CFUNCTYPE(
            ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
        )
        self._callback = callback_type(self._collect)  # kept alive as long as self
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, samples, count, events):
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, (count,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_END:
            if events[i].type == _EVENT_WORD:
                self._word_samples.append(events[i].sample)
            elif events[i].type == _EVENT_PHONEME:
                self._phones.append((events[i].sample, _phone(events[i].id)))
            i += 1
        return 0

    def say(self, text: str, voice: str, pitch: int, rate: int) -> tuple:
        """(int16 samples, the second at which each word begins, [(second, phone)] of each phone)."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"eSpeak NG has no voice {voice!r}")
        self.lib.espeak_SetParameter(1, rate, 0)  # espeakRATE, words per minute
        self.lib.espeak_SetParameter(3, pitch, 0)  # espeakPITCH, 0..100
        data = text.encode() + b"\0"
        # After some 20 espeak_TextToPhonemes calls (phonemize), the next synthesis alone
        # reports no word events (eSpeak NG 1.52); it is run again.
        for _ in range(2):
            self._chunks, self._word_samples, self._phones = [], [], []
            # Its voices' noise sources draw from rand(): seeded, an utterance is the same samples in any process.
            self.lib.espeak_ng_SetRandSeed(ctypes.c_long(0))
            self.lib.espeak_Synth(data, len(data), 0, 1, 0, 0, None, None)  # 1: POS_CHARACTER
            if len(self._word_samples) == len(text.split()):
                break
        else:
            raise RuntimeError(f"eSpeak NG reported {len(self._word_samples)} words in {text!r}")
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        phones = [(s / self.sample_rate, p) for s, p in self._phones]
        return audio, [s / self.sample_rate for s in self._word_samples], phones

    def say_16k(self, text: str, voice: str, pitch: int, rate: int) -> tuple:
        """(float32 samples at the corpus's 16 kHz, word start times and [[start, phone]], in
        seconds to the millisecond)."""
        from scipy.signal import resample_poly

        audio, word_starts, phones = self.say(text, voice, pitch, rate)
        audio = resample_poly(audio.astype(np.float32) / 32768.0, SAMPLE_RATE // 50, self.sample_rate // 50)  # 320/441
        return audio, [round(s, 3) for s in word_starts], [[round(s, 3), p] for s, p in phones]

    def phonemes(self, text: str, voice: str = "en-us") -> str:
        """eSpeak NG's ASCII phoneme mnemonics of `text` ("three red" -> "Tr'i: r'Ed")."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"eSpeak NG has no voice {voice!r}")
        self.lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        self.lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        pointer, clauses = ctypes.c_char_p(text.encode()), []
        while pointer.value:  # one clause per call; the pointer moves on
            clauses.append(self.lib.espeak_TextToPhonemes(ctypes.byref(pointer), 0, 0).decode())
        return " ".join(clauses)


# eSpeak NG is one state per process: data loaders' threads take turns.
_ESPEAK_LOCK = threading.Lock()


def espeak_16k(items) -> list:
    """16 kHz audio of (text, voice, pitch, rate) items, spoken by eSpeak NG as the built-in corpus is."""
    with _ESPEAK_LOCK:
        engine = _ESpeak()
        return [engine.say_16k(*item)[0] for item in items]


def corpus_voices(seed: int):
    """(train voices, test voices): accent + variant names, a fifth of them held out."""
    voices = [f"{a}+{v}" for a in ACCENTS for v in VARIANTS]
    random.Random(seed).shuffle(voices)
    held_out = len(voices) // 5
    return voices[held_out:], voices[:held_out]


def build_corpus(path: str, seed: int = 0, train_size: int = 2000, test_size: int = 200) -> None:
    """Synthesise the corpus into `path` unless its manifests are already there."""
    if all(os.path.isfile(os.path.join(path, f"{split}.jsonl")) for split in ("train", "test")):
        return
    os.makedirs(os.path.join(path, "wav"), exist_ok=True)
    engine = _ESpeak()
    rng = random.Random(seed)
    train_voices, test_voices = corpus_voices(seed)
    print(f"synthesising the speech corpus into {path} ({train_size} + {test_size} utterances)", flush=True)
    for split, size, voices in (("train", train_size, train_voices), ("test", test_size, test_voices)):
        lines = []
        for i in progress(range(size), size, f"synthesising {split}"):
            text, voice = corpus_sentence(rng), rng.choice(voices)
            pitch, rate = rng.randint(25, 75), rng.randint(130, 210)
            audio, word_starts, phones = engine.say_16k(text, voice, pitch, rate)
            key = f"{split}_{i:05d}"
            write_wav(os.path.join(path, "wav", f"{key}.wav"), audio)
            lines.append(
                json.dumps(
                    {
                        "key": key,
                        "source": f"wav/{key}.wav",
                        "target": text,
                        "speaker": f"{voice}/p{pitch}/r{rate}",
                        "voice": voice,
                        "word_starts": word_starts,
                        "phones": phones,
                    }
                )
            )
        # The manifests last: a run cut off before them starts over.
        files.write_text(os.path.join(path, f"{split}.jsonl"), "\n".join(lines) + "\n")


def voice(record):
    """A manifest record's voice: its "voice" field (the built-in corpus: the eSpeak voice,
    whatever the pitch and rate), else its "speaker"."""
    return record.get("voice", record.get("speaker"))


def prompt_pairs(records) -> list:
    """(prompt record, target record) pairs of a split's records for zero-shot TTS: a record's
    own prompt_source when it has one (the built-in corpus's tts_test), else another utterance
    of its speaker."""
    if "prompt_source" in records[0]:
        return [
            ({"source": r["prompt_source"], "target": r["prompt_target"], "speaker": r.get("speaker")}, r)
            for r in records
        ]
    by_speaker = {}
    for r in records:
        by_speaker.setdefault(r.get("speaker"), []).append(r)
    return [(group[i], group[i + 1]) for group in by_speaker.values() for i in range(0, len(group) - 1, 2)]


STYLES = {"rate": ("slow", "normal", "fast"), "pitch": ("low", "normal", "high")}


def speaking_style(record) -> dict:
    """The built-in corpus's speaking style of an utterance, read from its speaker key
    (voice/p<pitch>/r<rate>; build_corpus draws pitch 25-75 and rate 130-210 words a minute
    uniformly): {"rate": slow, normal or fast, "pitch": low, normal or high}, a third of each
    range to each name."""
    match = re.fullmatch(r".+/p(\d+)/r(\d+)", record.get("speaker") or "")
    if not match:
        raise ValueError(
            f"utterance {record.get('key')!r}: speaker {record.get('speaker')!r} is not the built-in "
            "corpus's voice/p<pitch>/r<rate>, which the speaking style is read from"
        )
    pitch, rate = int(match[1]), int(match[2])

    def third(value, low, high):  # which third of the range [low, high] holds the value
        return min(2, max(0, (value - low) * 3 // (high - low + 1)))

    return {"rate": STYLES["rate"][third(rate, 130, 210)], "pitch": STYLES["pitch"][third(pitch, 25, 75)]}


def build_prompt_pairs(path: str, seed: int = 0, size: int = 100) -> None:
    """<path>/tts_test.jsonl: held-out voices each saying two corpus sentences, a prompt and a
    target, with one pitch and rate (one speaker), for zero-shot TTS evaluation. The
    records are the target's, plus prompt_source and prompt_target."""
    manifest = os.path.join(path, "tts_test.jsonl")
    if os.path.isfile(manifest):
        return
    os.makedirs(os.path.join(path, "wav"), exist_ok=True)
    engine, rng = _ESpeak(), random.Random(seed + 1)
    _, voices = corpus_voices(seed)
    lines = []
    for i in range(size):
        voice, pitch, rate = rng.choice(voices), rng.randint(25, 75), rng.randint(130, 210)
        record = {"key": f"tts_{i:05d}", "speaker": f"{voice}/p{pitch}/r{rate}", "voice": voice}
        for role in ("prompt", "target"):
            text = corpus_sentence(rng)
            audio, word_starts, phones = engine.say_16k(text, voice, pitch, rate)
            name = f"wav/tts_{i:05d}_{role}.wav"
            write_wav(os.path.join(path, name), audio)
            if role == "prompt":
                record.update(prompt_source=name, prompt_target=text)
            else:
                record.update(source=name, target=text, word_starts=word_starts, phones=phones)
        lines.append(json.dumps(record))
    files.write_text(manifest, "\n".join(lines) + "\n")


def phonemize(texts, voice: str = "en-us") -> list[str]:
    """eSpeak NG's phonemes of each text (see _ESpeak.phonemes)."""
    with _ESPEAK_LOCK:
        engine = _ESpeak()
        return [engine.phonemes(t, voice) for t in texts]


def phonemize_words(texts, voice: str = "en-us") -> list[str]:
    """eSpeak NG's phonemes of each word of each text, a word's own spaces taken out, the words
    between single spaces: the phonemes keep the text's words apart (word alignment)."""
    words = [t.split() for t in texts]
    spoken = iter(phonemize([w for row in words for w in row], voice))
    return [" ".join(next(spoken).replace(" ", "") for _ in row) for row in words]


def write_wav(path: str, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """16-bit PCM WAV of (time,) or (time, channels) samples in [-1, 1], written atomically."""
    audio = np.asarray(audio)
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")

    def write(tmp):
        # The file opened first: a wave.Wave_write that fails to open complains again when collected.
        with open(tmp, "wb") as f, wave.open(f, "wb") as w:
            w.setnchannels(1 if audio.ndim == 1 else audio.shape[1])
            w.setsampwidth(2)
            w.setframerate(sample_rate)
            w.writeframes(pcm.tobytes())

    files.write_with(path, write)


def read_audio(path: str, sample_rate: int = SAMPLE_RATE, resample: bool = False, mono: bool = True) -> np.ndarray:
    """Float32 samples in [-1, 1]: mono (time,), or (time, channels) as the file has them when
    not `mono`. WAV (PCM 16/32-bit) is read with the standard library, FLAC with soundfile
    where installed. A file that cannot be read, is empty, or has another sample rate
    (unless `resample`) is an error naming it."""
    try:
        if path.lower().endswith(".flac"):
            import soundfile

            audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
        else:
            with wave.open(path, "rb") as w:
                rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
                raw = w.readframes(w.getnframes())
            if width not in (2, 4):
                raise InputError(f"{8 * width}-bit samples (need 16 or 32-bit PCM)")
            scale = 32768.0 if width == 2 else 2147483648.0
            audio = np.frombuffer(raw, "<i2" if width == 2 else "<i4").astype(np.float32) / scale
            audio = audio.reshape(-1, channels)
    except ImportError as e:
        raise RuntimeError(f"{path}: reading FLAC needs soundfile (pip install soundfile)") from e
    except Exception as e:  # wave.Error, EOFError, OSError, soundfile's errors
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise InputError(f"empty audio file {path} (0 bytes)") from None
        raise InputError(f"unreadable audio file {path}: {e or type(e).__name__}") from e
    if audio.size == 0:
        raise InputError(f"empty audio file {path}")
    if rate != sample_rate:
        if not resample:
            raise InputError(
                f"{path}: sample rate {rate} Hz, expected {sample_rate} Hz (set data.resample: true to resample)"
            )
        audio = resampled(audio, rate, sample_rate)
    return audio.mean(axis=1) if mono else audio


def resampled(audio: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    """Audio (time, ...) at ``rate`` Hz resampled to ``sample_rate`` Hz (polyphase, float32)."""
    if rate == sample_rate:
        return np.asarray(audio, np.float32)
    from scipy.signal import resample_poly

    g = np.gcd(rate, sample_rate)
    return resample_poly(audio, sample_rate // g, rate // g, axis=0).astype(np.float32)


def pad_waveforms(waveforms, length: int | None = None):
    """(audio (N, length or the longest) float32 zero-padded, lengths (N,) int32) of 1-D waveforms."""
    lengths = np.array([len(w) for w in waveforms], np.int32)
    audio = np.zeros((len(waveforms), length or lengths.max()), np.float32)
    for i, w in enumerate(waveforms):
        audio[i, : len(w)] = w
    return audio, lengths


def read_manifest(path: str) -> list[dict]:
    """A JSON-lines manifest: one {"key", "source", "target", ...} per line; `source` made absolute."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"manifest not found: {path}")
    root = os.path.dirname(os.path.abspath(path))
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{number}: not JSON: {e}") from e
            missing = {"key", "source", "target"} - set(record)
            if missing:
                raise InputError(f"{path}:{number}: missing {sorted(missing)}")
            for field in ("source", "prompt_source"):  # a TTS manifest's prompt audio too
                if field in record:
                    record[field] = os.path.join(root, record[field])
            records.append(record)
    if not records:
        raise InputError(f"{path}: no utterances")
    return records


def read_librispeech(path: str) -> list[dict]:
    """Utterances of a LibriSpeech split folder (e.g. .../LibriSpeech/train-clean-100)."""
    records = []
    for speaker in sorted(os.listdir(path)):
        for chapter in sorted(os.listdir(os.path.join(path, speaker))):
            folder = os.path.join(path, speaker, chapter)
            transcript = os.path.join(folder, f"{speaker}-{chapter}.trans.txt")
            if not os.path.isfile(transcript):
                raise FileNotFoundError(f"LibriSpeech chapter without transcript: {transcript}")
            for line in open(transcript):
                key, _, text = line.strip().partition(" ")
                audio = next(
                    (
                        os.path.join(folder, key + ext)
                        for ext in (".flac", ".wav")
                        if os.path.isfile(os.path.join(folder, key + ext))
                    ),
                    None,
                )
                if audio is None:
                    raise FileNotFoundError(f"{transcript}: no audio for {key} (.flac or .wav)")
                records.append({"key": key, "source": audio, "target": text.lower(), "speaker": speaker})
    if not records:
        raise InputError(f"no LibriSpeech utterances under {path}")
    return records


def audio_header(path: str, sample_rate: int = SAMPLE_RATE, resample: bool = False) -> tuple[str, float]:
    """(why read_audio would refuse the file, '' where it would not; its duration in seconds,
    0 where it cannot be read), from its header alone."""
    try:
        if path.lower().endswith(".flac"):
            import soundfile

            info = soundfile.info(path)
            rate, frames = info.samplerate, info.frames
        else:
            with wave.open(path, "rb") as w:
                rate, frames = w.getframerate(), w.getnframes()
                if w.getsampwidth() not in (2, 4):
                    return f"{path}: {8 * w.getsampwidth()}-bit samples (need 16 or 32-bit PCM)", 0.0
    except ImportError:
        return f"{path}: reading FLAC needs soundfile (pip install soundfile)", 0.0
    except Exception as e:  # wave.Error, EOFError, OSError, soundfile's errors
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            return f"empty audio file {path} (0 bytes)", 0.0
        return f"unreadable audio file {path}: {e or type(e).__name__}", 0.0
    if frames == 0:
        return f"empty audio file {path}", 0.0
    if rate != sample_rate and not resample:
        return f"{path}: sample rate {rate} Hz, expected {sample_rate} Hz (set data.resample: true to resample)", 0.0
    return "", frames / rate


# Batches by duration without data.bucket_seconds: buckets at the training durations'
# octiles, which pad about 10% on speech corpora; each bucket costs one compilation.
DEFAULT_BUCKETS = 8


def duration_buckets(d: AudioDataConfig, source, crop_of_samples):
    """data.LengthBuckets of a SpeechSource by duration (data.batch_seconds, data.bucket_seconds),
    or None under a fixed data.batch_size. crop_of_samples(samples) names each record array's
    size along its time axis in a bucket of that many samples."""
    from trainers.data import LengthBuckets

    if d.batch_seconds <= 0:
        return None
    durations = source.durations()
    usable = durations[(durations > 0) & (durations <= d.max_seconds)]
    if not len(usable):
        raise ValueError(f"no training utterance of at most data.max_seconds={d.max_seconds} to batch")
    bounds = list(d.bucket_seconds)
    if any(b <= 0 or b >= d.max_seconds for b in bounds) or bounds != sorted(set(bounds)):
        raise ValueError(
            f"data.bucket_seconds={bounds} must ascend strictly between 0 and data.max_seconds={d.max_seconds}"
        )
    if not bounds:
        bounds = np.quantile(usable, np.arange(1, DEFAULT_BUCKETS) / DEFAULT_BUCKETS)
    longest = np.ceil(usable.max() * 1000) / 1000  # the last bucket: lengths to the millisecond
    bounds = [*sorted({float(np.ceil(b * 1000) / 1000) for b in bounds if b < longest}), float(longest)]
    max_samples = int(d.max_seconds * SAMPLE_RATE)
    crops = [crop_of_samples(min(int(np.ceil(b * SAMPLE_RATE)), max_samples)) for b in bounds]
    return LengthBuckets(durations, bounds, d.batch_seconds, {k: [c[k] for c in crops] for k in crops[0]})


class SpeechSource:
    """Utterances of one split: the built-in corpus, a JSON-lines manifest, or LibriSpeech.

    Under data.on_bad_audio=error every file's header is checked here, so that a bad file
    in either split stops the run before it trains, not at its first evaluation.
    """

    def __init__(self, cfg, split: str):
        d = cfg.data
        if d.source == "speech":
            build_corpus(d.path, d.corpus_seed, d.corpus_train_size, d.corpus_test_size)
            if split == "tts_test":
                build_prompt_pairs(d.path, d.corpus_seed)
            self.records = read_manifest(os.path.join(d.path, f"{split}.jsonl"))
        elif d.source == "manifest":
            self.records = read_manifest(os.path.join(d.path, f"{split}.jsonl"))
        elif d.source == "librispeech":  # "a+b" joins splits (train-clean-100+train-clean-360+...)
            self.records = [r for part in split.split("+") for r in read_librispeech(os.path.join(d.path, part))]
        else:
            raise ConfigError(f"task {cfg.task} reads data.source speech, manifest or librispeech, not {d.source!r}")
        self.resample, self._durations = d.resample, None
        if d.on_bad_audio == "error":
            problems = [p for p, _ in self._headers() if p]
            if problems:
                more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
                raise InputError(
                    f"split {split!r}: {len(problems)} of {len(self.records)} audio files cannot be used: "
                    f"{'; '.join(problems[:3])}{more}. Fix them, or set data.on_bad_audio: skip"
                )

    def _headers(self) -> list:
        headers = [audio_header(r["source"], SAMPLE_RATE, self.resample) for r in self.records]
        self._durations = np.array([seconds for _, seconds in headers])
        return headers

    def durations(self) -> np.ndarray:
        """Each utterance's duration in seconds (0 where the file cannot be used), from the headers."""
        if self._durations is None:
            self._headers()
        return self._durations

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]
