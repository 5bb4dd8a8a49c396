"""FSMN-VAD: FunASR's voice-activity detector (the fsmn-vad model SenseVoice runs long audio
through), as funasr/models/fsmn_vad_streaming builds and runs it offline.

A frame classifier and a decision state machine. The classifier: 80-bin fbank (Hamming
window, 16-bit scale) stacked five frames at a time every frame (LFR 5/1), am.mvn's CMVN,
two affine layers, four FSMN blocks (a projection, a causal depthwise memory of 20 frames
added to its input, an affine layer, ReLU), two affine layers and a softmax over 248
classes, of which class 0 is silence. The state machine, per 10 ms frame: a frame is speech
when 1 - p(silence) exceeds p(silence) by speech_noise_thres; a 200 ms window turns 150 ms
of speech frames into a start (taken back 200 ms more) and, in speech, a silence longer
than the end-silence limit into an end (kept 100 ms past the speech); a segment longer than
max_single_segment_time is cut. FunASR's offline inference feeds the recording in 60 s
chunks and, at each chunk, sets the end-silence limit from how long the current speech has
run (2 s in its first 10 s, down to 100 ms past 60 s) and speech_noise_thres to 0.5, unless
max_end_silence_time is given; the chunks are kept here for those two effects alone (the
classifier sees the whole recording: its memory is causal, so it reads the same frames).

    vad = fsmn_vad.load("speech_fsmn_vad_zh-cn-16k-common-pytorch")   # model.pt, config.yaml, am.mvn
    vad(audio_16k)                       # [[start_ms, end_ms], ...], as FunASR's "value"
    merge_segments(vad(audio), 15000)    # FunASR's merge_vad: contiguous pieces of about 15 s
"""

import dataclasses
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.asr.frontend import apply_cmvn, fbank, low_frame_rate, read_am_mvn
from jaxmodels.nn.layers import Dense

SAMPLE_RATE = 16000
FRAME_MS = 10
FRAME_SAMPLES = 400  # 25 ms
HOP_SAMPLES = 160

# FunASR's offline schedule of the end-silence limit: (speech so far (ms), limit (ms)).
SILENCE_SCHEDULE = ((10000, 2000), (20000, 1000), (30000, 800), (40000, 600), (50000, 400), (60000, 200),
                    (math.inf, 100))  # fmt: skip


@dataclasses.dataclass(frozen=True)
class FSMNConfig:
    """The encoder_conf of the released model's config.yaml."""

    input_dim: int = 400
    input_affine_dim: int = 140
    fsmn_layers: int = 4
    linear_dim: int = 250
    proj_dim: int = 128
    lorder: int = 20
    rorder: int = 0
    lstride: int = 1
    rstride: int = 0
    output_affine_dim: int = 140
    output_dim: int = 248


@dataclasses.dataclass(frozen=True)
class VadOptions:
    """The model_conf the decisions read (FunASR's VADXOptions), at the released values.
    max_end_silence_time None follows SILENCE_SCHEDULE; a number fixes the limit (ms)."""

    detect_mode: int = 1  # 1: one segment after another; 0: the first segment only
    max_end_silence_time: int | None = None
    max_start_silence_time: int = 3000
    window_size_ms: int = 200
    sil_to_speech_time_thres: int = 150
    speech_to_sil_time_thres: int = 150
    speech_2_noise_ratio: float = 1.0
    do_extend: int = 1
    lookback_time_start_point: int = 200
    lookahead_time_end_point: int = 100
    max_single_segment_time: int = 60000
    snr_thres: float = -100.0
    noise_frame_num_used_for_snr: int = 100
    decibel_thres: float = -100.0
    speech_noise_thres: float = 0.6
    sil_pdf_ids: tuple = (0,)
    chunk_ms: int = 60000  # the offline inference's chunk


class FSMNBlock(nn.Module):
    """linear (no bias) -> memory: x + causal depthwise convolution over time (and a
    look-ahead one with rorder) -> affine -> ReLU."""

    cfg: FSMNConfig

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        p = Dense(c.proj_dim, axes=("embed", "mlp"), use_bias=False, name="linear")(x)
        frames = p.shape[1]
        init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, "mlp"))
        left = self.param("conv_left", init, (c.lorder, c.proj_dim))
        reach = (c.lorder - 1) * c.lstride
        padded = jnp.pad(p, ((0, 0), (reach, 0), (0, 0)))
        memory = p + sum(left[k] * padded[:, k * c.lstride : k * c.lstride + frames] for k in range(c.lorder))
        if c.rorder > 0:  # out[t] += sum_k right[k] * p[t + (k + 1) * rstride]
            right = self.param("conv_right", init, (c.rorder, c.proj_dim))
            padded = jnp.pad(p, ((0, 0), (0, c.rorder * c.rstride), (0, 0)))
            memory = memory + sum(
                right[k] * padded[:, (k + 1) * c.rstride : (k + 1) * c.rstride + frames] for k in range(c.rorder)
            )
        return nn.relu(Dense(c.linear_dim, axes=("mlp", "embed"), name="affine")(memory))


class FSMN(nn.Module):
    """(B, T, input_dim) LFR features -> (B, T, output_dim) class probabilities."""

    cfg: FSMNConfig

    @nn.compact
    def __call__(self, feats):
        c = self.cfg
        x = Dense(c.input_affine_dim, name="in_linear1")(feats)
        x = nn.relu(Dense(c.linear_dim, name="in_linear2")(x))
        for i in range(c.fsmn_layers):
            x = FSMNBlock(c, name=f"fsmn_{i}")(x)
        x = Dense(c.output_affine_dim, name="out_linear1")(x)
        return jax.nn.softmax(Dense(c.output_dim, name="out_linear2")(x), axis=-1)


def from_torch(state_dict, cfg: FSMNConfig) -> dict:
    """{"params"} of FSMN from FunASR's FsmnVADStreaming state_dict (model.pt: encoder.*)."""
    from jaxmodels.nn.state_dict import assign_state_dict, module_path, torch_to_flax_leaf

    shapes = nn.meta.unbox(jax.eval_shape(FSMN(cfg).init, jax.random.key(0), jnp.zeros((1, 4, cfg.input_dim))))

    def key_map(key, value):
        path, leaf = module_path(key.removeprefix("encoder."))
        if path[-1] in ("conv_left", "conv_right"):  # fsmn_N.fsmn_block.conv_left.weight (D, 1, k, 1) -> (k, D)
            return ("params", path[0], path[-1]), value[:, 0, :, 0].T
        if path[-1] == "linear":  # LinearTransform / AffineTransform wrap one nn.Linear
            path = path[:-1]
        name, value = torch_to_flax_leaf(leaf, value)
        return ("params", *path, name), value

    return assign_state_dict(state_dict, shapes, key_map)


def features(audio, mean, inverse_std):
    """(1, T, 400) LFR features of one 16 kHz recording (FunASR's WavFrontendOnline: fbank,
    LFR 5/1 with the first frame repeated twice before and the last after, then CMVN)."""
    wav = jnp.asarray(audio, jnp.float32)[None]
    length = jnp.array([wav.shape[1]])
    feats, frames = fbank(wav, length, window="hamming")
    feats, frames = low_frame_rate(feats, frames, lfr_m=5, lfr_n=1)
    return apply_cmvn(feats, frames, mean, inverse_std)


def decibels(audio) -> np.ndarray:
    """Each frame's energy in dB, 10 log10(sum x^2 + 1e-6) over its 25 ms (samples in [-1, 1])."""
    audio = np.asarray(audio, np.float32)
    count = (len(audio) - FRAME_SAMPLES) // HOP_SAMPLES + 1
    index = np.arange(count)[:, None] * HOP_SAMPLES + np.arange(FRAME_SAMPLES)
    return 10 * np.log10(np.sum(np.square(audio[index]), axis=1) + 0.000001)


def _log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


# The decision state machine's states (FunASR's VadStateMachine).
_START_NOT_DETECTED, _IN_SPEECH, _END_DETECTED = 1, 2, 3


class _Window:
    """FunASR's WindowDetector: the last window_size_ms of frame decisions; silence turns to
    speech when at least sil_to_speech_time_thres of them are speech, back when at most
    speech_to_sil_time_thres are. ``step`` says which change (or none) a frame makes."""

    def __init__(self, opts: VadOptions):
        self.size = opts.window_size_ms // FRAME_MS
        self.to_speech = opts.sil_to_speech_time_thres // FRAME_MS
        self.to_silence = opts.speech_to_sil_time_thres // FRAME_MS
        self.reset()

    def reset(self):
        self.states, self.position, self.total, self.speech = [0] * self.size, 0, 0, False

    def step(self, speech: bool) -> str:
        self.total += int(speech) - self.states[self.position]
        self.states[self.position] = int(speech)
        self.position = (self.position + 1) % self.size
        if not self.speech and self.total >= self.to_speech:
            self.speech = True
            return "sil2speech"
        if self.speech and self.total <= self.to_silence:
            self.speech = False
            return "speech2sil"
        return "speech2speech" if self.speech else "sil2sil"


class Detector:
    """The decisions of FunASR's FsmnVADStreaming over one recording's frames: ``run``
    takes each frame's silence probability and energy, returns [[start_ms, end_ms], ...].

    Upstream moves audio into output buffers as it decides; only the frame bookkeeping that
    decides the segments' times is kept (data_start: the first frame not yet consumed)."""

    def __init__(self, opts: VadOptions):
        self.opts = opts
        self.window = _Window(opts)
        self.latency = self.window.size + (opts.lookback_time_start_point // FRAME_MS if opts.do_extend else 0)
        given = opts.max_end_silence_time
        self.max_end_silence = None if given is None else given - opts.speech_to_sil_time_thres  # set by run
        self.speech_noise_thres = opts.speech_noise_thres
        self.data_start = 0
        self.noise_decibel = -100.0
        self.ends_detected = 0
        self.segments = []  # [start_ms, end_ms, has_start, has_end]
        self.emitted = 0  # segments returned so far
        self.reset()

    def reset(self):
        self.silence_run = 0
        self.last_speech = 0
        self.last_silence = -1
        self.start_frame = -1
        self.end_frame = -1
        self.state = _START_NOT_DETECTED
        self.window.reset()

    # -- the frame decision -----------------------------------------------------------
    def is_speech(self, silence_prob: float, decibel: float) -> bool:
        o = self.opts
        if decibel < o.decibel_thres:
            return False
        noise = _log(silence_prob) * o.speech_2_noise_ratio
        speech = _log(1.0 - silence_prob)
        if math.exp(speech) >= math.exp(noise) + self.speech_noise_thres:
            return decibel - self.noise_decibel >= o.snr_thres and decibel >= o.decibel_thres
        n = o.noise_frame_num_used_for_snr  # a running mean of the non-speech frames' energy
        self.noise_decibel = decibel if self.noise_decibel < -99.9 else (decibel + self.noise_decibel * (n - 1)) / n
        return False

    # -- the output buffer ------------------------------------------------------------
    def _consume(self, frame: int):
        self.data_start = max(self.data_start, frame)

    def _output(self, frame: int, starts: bool = False, ends: bool = False):
        self._consume(frame)
        if not self.segments or starts:
            self.segments.append([frame * FRAME_MS, frame * FRAME_MS, False, False])
        segment = self.segments[-1]
        self.data_start += 1
        segment[1] = (frame + 1) * FRAME_MS
        segment[2] |= starts
        segment[3] |= ends

    def _silence(self, frame: int):
        self.last_silence = frame
        if self.state == _START_NOT_DETECTED:
            self._consume(frame)

    def _voice(self, frame: int):
        self.last_speech = frame
        self._output(frame)

    def _voice_start(self, frame: int, fake: bool = False):
        if self.start_frame == -1:
            self.start_frame = frame
        if not fake and self.state == _START_NOT_DETECTED:
            self._output(self.start_frame, starts=True)

    def _voice_end(self, frame: int, fake: bool = False):
        for t in range(self.last_speech + 1, frame):
            self._voice(t)
        if self.end_frame == -1:
            self.end_frame = frame
        if not fake:
            self._output(self.end_frame, ends=True)
        self.ends_detected += 1

    def _end(self, frame: int):
        self._voice_end(frame)
        self.state = _END_DETECTED

    def _too_long(self, frame: int) -> bool:
        return frame - self.start_frame + 1 > self.opts.max_single_segment_time / FRAME_MS

    def _in_speech(self, frame: int, last: bool):
        """A speech segment goes on through ``frame``: cut when too long, ended at the last frame."""
        if self._too_long(frame):
            self._end(frame)
        elif not last:
            self._voice(frame)
        else:
            self._end(frame)

    def step(self, frame: int, speech: bool, last: bool):
        o = self.opts
        change = self.window.step(speech)
        if change == "sil2speech":
            self.silence_run = 0
            if self.state == _START_NOT_DETECTED:
                start = max(self.data_start, frame - self.latency)
                self._voice_start(start)
                self.state = _IN_SPEECH
                for t in range(start + 1, frame + 1):
                    self._voice(t)
            elif self.state == _IN_SPEECH:
                for t in range(self.last_speech + 1, frame):
                    self._voice(t)
                self._in_speech(frame, last)
        elif change in ("speech2sil", "speech2speech"):
            self.silence_run = 0
            if self.state == _IN_SPEECH:
                self._in_speech(frame, last)
        else:  # sil2sil
            self.silence_run += 1
            if self.state == _START_NOT_DETECTED:
                timed_out = o.detect_mode == 0 and self.silence_run * FRAME_MS > o.max_start_silence_time
                if timed_out or (last and self.ends_detected == 0):  # no speech: a segment of no length
                    for t in range(self.last_silence + 1, frame):
                        self._silence(t)
                    self._voice_start(0, fake=True)
                    self._voice_end(0, fake=True)
                    self.state = _END_DETECTED
                elif frame >= self.latency:
                    self._silence(frame - self.latency)
            elif self.state == _IN_SPEECH:
                if self.silence_run * FRAME_MS >= self.max_end_silence:
                    back = self.max_end_silence // FRAME_MS
                    if o.do_extend:
                        back = max(0, back - o.lookahead_time_end_point // FRAME_MS - 1)
                    self._end(frame - back)
                elif self._too_long(frame):
                    self._end(frame)
                elif o.do_extend and not last:
                    if self.silence_run <= o.lookahead_time_end_point // FRAME_MS:
                        self._voice(frame)
                elif last:
                    self._end(frame)
        if self.state == _END_DETECTED and o.detect_mode == 1:
            self.reset()

    def _emit(self, final: bool) -> list:
        """The segments completed since the last call (at the final chunk, all that are left)."""
        out = []
        for segment in self.segments[self.emitted :]:
            if final or (segment[2] and segment[3]):
                out.append(segment[:2])
                self.emitted += 1
        return out

    def run(self, silence_probs, decibels, samples: int) -> list:
        """[[start_ms, end_ms], ...] of a recording of ``samples`` samples from its frames,
        chunk by chunk as FunASR's offline inference (chunks of opts.chunk_ms of audio)."""
        o = self.opts
        frames = len(silence_probs)
        chunk = o.chunk_ms * SAMPLE_RATE // 1000
        # LFR frames out of the streaming frontend by the end of each chunk but the last: its
        # fbank frames so far, with two copies of the first before them, less the four it holds.
        bounds = [(k * chunk - FRAME_SAMPLES) // HOP_SAMPLES + 1 - 2 for k in range(1, samples // chunk + 1)]
        bounds = [b for b in bounds if b < frames] + [frames]
        spoken, in_speech, out, begin = 0, False, [], 0
        for end in bounds:
            if o.max_end_silence_time is None:  # FunASR's dynamic end-silence limit
                if self.state == _IN_SPEECH or in_speech:
                    spoken, in_speech = spoken + o.chunk_ms, True
                limit = next(ms for upto, ms in SILENCE_SCHEDULE if spoken <= upto)
                self.max_end_silence = max(limit - o.speech_to_sil_time_thres, 0)
                self.speech_noise_thres = 0.5
            final = end == frames
            for t in range(begin, end):
                if self.state == _END_DETECTED:  # detect_mode 0: the first segment is all
                    break
                self.step(t, self.is_speech(float(silence_probs[t]), float(decibels[t])), final and t == end - 1)
            new = self._emit(final)
            if new:
                spoken, in_speech = 0, False
            out += new
            begin = end
        return out


def merge_segments(segments, max_ms: int, min_ms: int = 0) -> list:
    """FunASR's merge_vad: the recording from 0 to the last segment's end cut at segment
    boundaries into pieces each just over max_ms long (or the rest), silences included."""
    if len(segments) <= 1:
        return [list(s) for s in segments]
    times = sorted({t for segment in segments for t in segment})
    out, begin = [], 0
    for time, following in zip(times, times[1:]):
        if following - begin < max_ms:
            continue
        if time - begin > min_ms:
            out.append([begin, time])
        begin = time
    return out + [[begin, times[-1]]]


@dataclasses.dataclass
class FsmnVad:
    """A loaded FSMN-VAD: ``vad(audio)`` -> [[start_ms, end_ms], ...] of a 16 kHz recording."""

    config: FSMNConfig
    options: VadOptions
    params: dict
    mean: np.ndarray
    inverse_std: np.ndarray

    def __post_init__(self):
        model = FSMN(self.config)
        self._scores = jax.jit(lambda params, feats: model.apply({"params": params}, feats))

    def silence_probs(self, audio) -> np.ndarray:
        """Each 10 ms frame's probability of silence (the sil_pdf_ids' classes summed)."""
        probs = self._scores(self.params, features(audio, self.mean, self.inverse_std))[0]
        return np.asarray(jnp.sum(probs[:, list(self.options.sil_pdf_ids)], axis=-1))

    def __call__(self, audio) -> list:
        audio = np.asarray(audio, np.float32)
        if audio.ndim != 1:
            raise ValueError(f"FSMN-VAD takes one mono recording (samples,), not shape {audio.shape}")
        if len(audio) < FRAME_SAMPLES:
            return []
        return Detector(self.options).run(self.silence_probs(audio), decibels(audio), len(audio))


def load(model_dir: str, **options) -> FsmnVad:
    """The released FSMN-VAD of a folder holding model.pt (or model.safetensors),
    config.yaml (encoder_conf, model_conf) and am.mvn; ``options`` override model_conf's."""
    import yaml

    from jaxmodels.nn.state_dict import load_state_dict

    with open(os.path.join(model_dir, "config.yaml")) as f:
        conf = yaml.safe_load(f)
    if conf.get("encoder", "FSMN") != "FSMN":
        raise ValueError(f"{model_dir}/config.yaml: encoder {conf.get('encoder')!r}, FSMN-VAD's is FSMN")
    frontend = conf.get("frontend_conf", {})
    expected = {"fs": 16000, "n_mels": 80, "frame_length": 25, "frame_shift": 10, "lfr_m": 5, "lfr_n": 1}
    wrong = {k: frontend[k] for k, v in expected.items() if k in frontend and frontend[k] != v}
    if wrong:
        raise ValueError(f"{model_dir}/config.yaml: frontend_conf {wrong}; FSMN-VAD here reads {expected}")
    cfg = FSMNConfig(**conf.get("encoder_conf", {}))
    names = {f.name for f in dataclasses.fields(VadOptions)}
    model_conf = {k: v for k, v in conf.get("model_conf", {}).items() if k in names}
    model_conf.pop("max_end_silence_time", None)  # FunASR's inference follows its schedule unless told otherwise
    opts = VadOptions(**{**model_conf, **options})
    if opts.detect_mode not in (0, 1):
        raise ValueError(f"detect_mode {opts.detect_mode}: 0 (one segment) or 1 (one after another)")
    weights = next((os.path.join(model_dir, n) for n in ("model.pt", "model.safetensors")
                    if os.path.exists(os.path.join(model_dir, n))), os.path.join(model_dir, "model.pt"))  # fmt: skip
    params = jax.tree.map(jnp.asarray, from_torch(load_state_dict(weights), cfg)["params"])
    mean, inverse_std = read_am_mvn(os.path.join(model_dir, "am.mvn"))
    return FsmnVad(cfg, opts, params, mean, inverse_std)
