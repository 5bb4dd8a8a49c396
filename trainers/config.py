"""Typed experiment configs: YAML in, validated dataclasses out.

An unknown key or a value of the wrong type is an error that names the dotted key and
lists the valid ones. Command-line overrides are ``dotted.key=value`` with the value
parsed as YAML (``optimizer.lr=1e-3``, ``mesh.fsdp=-1``, ``model.args.dims=[8,16]``).
"""

import argparse
import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    pass


@dataclass
class ModelConfig:
    name: str = "mambaout_femto"  # a named variant of the task's family
    args: dict[str, Any] = field(default_factory=dict)  # constructor overrides, upstream names


@dataclass
class DataConfig:
    source: Literal["digits", "imagefolder", "latents", "speech", "manifest", "librispeech"] = "digits"
    # imagefolder: root with train/ and val/ of class subfolders; latents: dir of <split>.npz;
    # speech: where the built-in corpus is (or will be) synthesised; manifest: dir of
    # <split>.jsonl; librispeech: the LibriSpeech root (splits are its folders, e.g. train-clean-100)
    path: str = ""
    train_split: str = "train"
    eval_split: str = "val"
    image_size: int = 32
    eval_crop_pct: float = 1.0  # eval: shorter side to image_size/crop_pct, centre crop (MambaOut's cfg: 1.0)
    holdout_fraction: float = 0.2  # digits: held-out share for evaluation
    batch_size: int = 64  # global, over all devices and processes
    eval_batch_size: int = 128
    num_workers: int = 0  # grain worker processes (0: read in the trainer process)
    on_bad_image: Literal["error", "skip"] = "error"
    on_bad_audio: Literal["error", "skip"] = "error"  # unreadable, empty, wrong rate, too long
    max_seconds: float = 3.0  # audio is padded to this length; longer utterances are bad audio
    resample: bool = False  # audio at another sample rate: resample to 16 kHz instead of an error
    random_resized_crop: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mixup_switch_prob: float = 0.5  # with both on: chance of cutmix over mixup per batch (timm's)

    def __post_init__(self):
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be at least 1, not {getattr(self, name)}")


@dataclass
class OptimizerConfig:
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.9  # sgd
    nesterov: bool = False
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    warmup_init_lr: float = 0.0
    min_lr: float = 0.0
    clip_grad_norm: float = 0.0  # 0: no clipping
    ema_decay: float = 0.0  # 0: no EMA of params
    grad_accum_steps: int = 1


@dataclass
class MeshConfig:
    data: int = -1  # -1: whatever the other axes leave of the devices
    fsdp: int = 1
    tensor: int = 1


@dataclass
class TrainConfig:
    steps: int = 1000
    log_every: int = 50
    eval_every: int = 500  # also evaluated at the end
    checkpoint_every: int = 500  # also saved at the end
    keep_checkpoints: int = 3
    best_metric: str = ""  # e.g. "accuracy": also keep the best checkpoint by eval/<best_metric>
    best_mode: Literal["max", "min"] = "max"
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    remat: bool = False
    async_checkpointing: bool = True
    # A step with a non-finite loss or gradient norm is never applied; "error" stops the run
    # there (its checkpoints intact), "skip" goes on with the next batch.
    on_nonfinite: Literal["error", "skip"] = "error"

    def __post_init__(self):
        for name in ("steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"train.{name} must be at least 1, not {getattr(self, name)} "
                    "(logs, evaluations and checkpoints also come at the last step)"
                )


@dataclass
class DiffusionConfig:
    """Gaussian diffusion (task: diffusion): training schedule, and how eval samples are drawn."""

    noise_schedule: Literal["linear", "cosine"] = "linear"
    diffusion_steps: int = 1000
    sampler: Literal["ddpm", "ddim"] = "ddpm"
    sample_respacing: str = "250"  # upstream's spec: "250", "ddim50", "10,15,20", ...
    eta: float = 0.0  # ddim
    cfg_scale: float = 4.0  # classifier-free guidance; 1.0 samples without it
    guide_all_channels: bool = False  # upstream guides the first 3 output channels only
    samples_per_class: int = 8  # eval grid: one row per class
    # The eval agreement metric: a classification run (its config, and a workdir that
    # holds or will hold its checkpoints) scores whether samples show their class.
    classifier_config: str = ""
    classifier_workdir: str = ""


@dataclass
class SpeechConfig:
    """Speech recognition (task: ctc): front end, tokens, augmentation and decoding."""

    # The CTC vocabulary: "words" or "chars" of the training transcripts, or "pieces": the
    # sub-word list in token_list (a JSON list or one token per line, "▁" marking word
    # starts, e.g. SenseVoice's tokens.json), text split by longest match.
    tokens: Literal["words", "chars", "pieces"] = "chars"
    token_list: str = ""
    num_mel_bins: int = 80
    lfr_m: int = 7  # low frame rate: stack lfr_m frames every lfr_n (SenseVoice: 7, 6)
    lfr_n: int = 6
    dither: float = 1.0  # training only, as FunASR's front end
    cmvn_utterances: int = 500  # training utterances the global mean and variance come from
    num_freq_masks: int = 1  # SpecAugment, training only (0 masks: off)
    freq_mask_width: int = 30
    num_time_masks: int = 1
    time_mask_width: int = 12
    # Training only: each utterance low-passed (cutoff uniform in lowpass_hz) with this
    # probability and, apart, given white noise (SNR uniform in noise_snr_db); 0: off.
    degrade_prob: float = 0.0
    lowpass_hz: tuple[float, float] = (2000.0, 8000.0)
    noise_snr_db: tuple[float, float] = (5.0, 40.0)
    max_label_length: int = 64
    prompts: bool = False  # SenseVoice's language/event/emotion/textnorm queries and their loss
    beam_size: int = 8  # eval: greedy and prefix beam search WER
    lm_order: int = 0  # > 0: an n-gram trained on the training transcripts, fused in the beam
    lm_path: str = ""  # or an ARPA file
    lm_words: bool = (
        False  # the n-gram is over words, scored as each is spelt (chars/pieces); else over the CTC tokens
    )
    lm_weight: float = 0.5
    length_bonus: float = 0.0
    # A run's folder whose tokens.json, cmvn.npz and lm.arpa (written at eval) replace
    # building them from the training data (transcription reads the run's own).
    assets: str = ""
    corpus_seed: int = 0  # the built-in corpus
    corpus_train_size: int = 2000
    corpus_test_size: int = 200


CODEC_LOSSES = ("adv", "feat", "l1", "mel", "msspec")


@dataclass
class CodecConfig:
    """Neural audio codec (task: codec): training crops, losses and their balance, the discriminator.

    Defaults are AudioCraft's compression solver (config/solver/compression/default.yaml).
    """

    segment_seconds: float = 1.0  # random training crops
    # Weights of the balanced losses (adv, feat: hinge and feature matching of the MS-STFT
    # discriminator; l1: waveform; mel: log-mel L1; msspec: multi-scale mel).
    loss_weights: dict[str, float] = field(
        default_factory=lambda: {"adv": 4.0, "feat": 4.0, "l1": 0.1, "mel": 0.0, "msspec": 2.0}
    )
    balance_grads: bool = True  # False: a plain weighted sum of the losses
    # Steps before adv and feat reach the codec (VQGAN's disc_start; AudioCraft: 0). The
    # discriminator trains from the start, so its gradients mean something when they do.
    adversarial_start: int = 0
    balancer_total_norm: float = 1.0
    balancer_ema_decay: float = 0.999
    commitment_weight: float = 1.0  # the RVQ's commitment loss, outside the balancer
    quantizer_dropout: bool = True  # train each batch with a random number of codebooks
    disc_filters: int = 32
    disc_n_ffts: list[int] = field(default_factory=lambda: [1024, 2048, 512, 256, 128])
    disc_hop_lengths: list[int] = field(default_factory=lambda: [256, 512, 128, 64, 32])
    disc_win_lengths: list[int] = field(default_factory=lambda: [1024, 2048, 512, 256, 128])
    disc_negative_slope: float = 0.3
    msspec_range: tuple[int, int] = (6, 11)  # n_fft = 2^6 .. 2^10
    n_mels: int = 64
    f_min: float = 64.0
    eval_examples: int = 4  # eval utterances written as WAVs and spectrograms

    def __post_init__(self):
        unknown = sorted(set(self.loss_weights) - set(CODEC_LOSSES))
        if unknown:
            raise ConfigError(f"codec.loss_weights: unknown loss {unknown[0]!r}; valid: {', '.join(CODEC_LOSSES)}")


@dataclass
class TTSConfig:
    """Zero-shot TTS over codec tokens (task: tts): the codec, text, prompts, sampling, evaluation."""

    # The codec whose codes are modelled: a codec run (its config, and a workdir that holds
    # or will hold its checkpoints: trained there first if it has none), or official
    # EnCodec weights (codec_weights, with codec_model a name or a JSON file of its config).
    codec_config: str = ""
    codec_workdir: str = ""
    codec_weights: str = ""
    codec_model: str = "encodec_24khz"
    bandwidth: float = 0.0  # kbps: how many of the codec's codebooks are modelled (0: all)
    # Where the corpus's codes are cached (<dir>/<split>.npz); default <codec_workdir>/tokens.
    tokens_dir: str = ""
    text: Literal["chars", "phonemes"] = "chars"  # UTF-8 bytes of the text, or of eSpeak NG's phonemes
    # What the LM is conditioned on: the text, or (a delayed LM) the semantic tokens of the
    # utterance itself, AudioLM's acoustic stage: k-means units of log-mel frames or of a
    # CTC run's encoder states (tts.recognizer_*), fitted on the training split and saved
    # as <tokens_dir>/semantic.npz.
    condition: Literal["text", "semantic"] = "text"
    semantic_features: Literal["logmel", "recognizer"] = "logmel"
    semantic_clusters: int = 100
    semantic_frame_rate: int = 25
    semantic_deduplicate: bool = False
    max_text_length: int = 128  # text bytes or semantic tokens; longer utterances are skipped (and counted)
    max_frames: int = 512  # codec frames; longer utterances are skipped (and counted)
    # Training: with this probability an example is another utterance of the same voice (the
    # manifest's "voice", else "speaker") followed by this one, texts joined by a space, codes
    # end to end (when both fit): what zero-shot inference feeds the model (a prompt and its
    # continuation), which a corpus of short utterances otherwise never shows it.
    pair_prob: float = 0.0
    # Sampling of the AR model (the NAR stages are greedy, as VALL-E's).
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    # Classifier-free guidance of the VALL-E AR on its text: the text (and word alignment) is
    # dropped from this fraction of training examples, and codes are drawn at this scale
    # (1.0: without guidance; speechlm.generate_ar).
    guidance_dropout: float = 0.0
    guidance_scale: float = 1.0
    # Evaluation: eval_examples held-out sentences spoken in the voice of a prompt utterance
    # of the same speaker, transcribed by a CTC run (its config and workdir; trained there
    # first if it has none) for the word error rate.
    eval_examples: int = 16
    eval_offset: int = 0  # the prompt pairs evaluated: [eval_offset, eval_offset + eval_examples)
    recognizer_config: str = ""
    recognizer_workdir: str = ""
    # A speaker classifier trained on the training voices gives the embeddings of the
    # speaker-similarity score (0 steps: no score).
    speaker_steps: int = 400

    def __post_init__(self):
        if self.eval_offset < 0:
            raise ConfigError(f"tts.eval_offset must be at least 0, not {self.eval_offset}")
        if not 0.0 <= self.guidance_dropout < 1.0:
            raise ConfigError(f"tts.guidance_dropout must be in [0, 1), not {self.guidance_dropout}")


@dataclass
class Config:
    task: str = "classification"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    tts: TTSConfig = field(default_factory=TTSConfig)


def _check(value, tp, key):
    """Returns ``value`` converted to ``tp`` or raises ConfigError naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, key)
    if tp is Any:
        return value
    if origin is typing.Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        return _check(value, next(a for a in args if a is not type(None)), key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (tuple, list, tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        item = args[0] if args else Any
        return origin(_check(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (dict, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]}; valid keys of {prefix or 'the config'}: {', '.join(names)}"
        )
    kwargs = {k: _check(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def apply_override(data: dict, override: str) -> None:
    """Sets ``a.b.c=value`` in a nested dict (the value parsed as YAML; ``a.b.c=`` is the
    empty string, e.g. to switch off an optional path)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form dotted.key=value")
    key, raw = override.split("=", 1)
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {override!r}: the value is not valid YAML: {_yaml_problem(e)}") from None


def _yaml_problem(e) -> str:
    """PyYAML's error in one line: what, and where (line and column, counted from 1)."""
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{getattr(e, 'problem', None) or e}{where}"


def load(path: str, overrides=()) -> Config:
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    for o in overrides:
        apply_override(data, o)
    try:
        return from_dict(Config, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def to_dict(cfg: Config) -> dict:
    def plain(x):
        if isinstance(x, tuple):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, list):
            return [plain(v) for v in x]
        return x

    return plain(dataclasses.asdict(cfg))


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def parse_command_line(prog: str, description: str, argv=None, add_arguments=lambda parser: None):
    """(args, Config) from ``CONFIG.yaml --workdir DIR [dotted.key=value ...]`` plus a command's own flags.

    A config error ends the process with its message (no traceback).
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("config", help="experiment YAML (configs/...)")
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics and pictures; resumed from")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. optimizer.lr=1e-3")
    add_arguments(parser)
    args = parser.parse_intermixed_args(argv)
    try:
        return args, load(args.config, args.overrides)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
