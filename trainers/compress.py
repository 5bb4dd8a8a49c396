"""Compress audio to codec codes and back.

    python -m trainers.compress encode IN.wav OUT.npz --bandwidth 6 MODEL
    python -m trainers.compress decode IN.npz OUT.wav MODEL

MODEL is either a codec run (``--config CONFIG.yaml --workdir DIR [--checkpoint STEP]``:
its EMA weights when it has them) or official weights (``--weights FILE --model NAME``:
encodec_24khz, encodec_48khz, speechtokenizer_hubert_avg, speechtokenizer_snake, or a JSON file
of upstream's arguments or SpeechTokenizer's config.json; .safetensors, or upstream's .th / .pt
with torch installed). SpeechTokenizer's bandwidths are 0.5 kbps per quantizer. The input is
resampled to the model's rate and its channels converted as upstream's convert_audio
does (averaged to mono, or mono repeated). The .npz holds each segment's codes
(``codes_<i>``, (1, K, frames)) and scale (``scale_<i>``, normalising models), plus the
sample rate, channel count, length and bandwidth; decoding checks that they fit the model.
"""

import argparse
import sys

import numpy as np

from trainers import files
from trainers.cli import InputError, command


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m trainers.compress", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("direction", choices=["encode", "decode"])
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--bandwidth", type=float, default=None, help="kbps, one of the model's (default: the highest)")
    p.add_argument("--config", help="a codec run's config")
    p.add_argument("--workdir", help="the codec run's directory")
    p.add_argument("--checkpoint", type=int, default=None, help="step (default: newest)")
    p.add_argument("--weights", help="official EnCodec or SpeechTokenizer weights")
    p.add_argument(
        "--model",
        default="encodec_24khz",
        help="the weights' config: a name in jaxmodels.codec.VARIANTS, or a JSON file (EncodecConfig fields, "
        "or SpeechTokenizer's config.json)",
    )
    return p


def load_codec(args):
    """The codec of a training run, or of official weights."""
    if args.weights:
        from trainers.tasks.codec import official_codec

        return official_codec(args.weights, args.model)
    if not (args.config and args.workdir):
        sys.exit("give a codec run (--config and --workdir) or official weights (--weights)")
    from trainers.checkpoint import restore_run
    from trainers.config import load
    from trainers.loop import Trainer

    cfg = load(args.config)
    if cfg.task != "codec":
        sys.exit(f"{args.config}: task is {cfg.task!r}; compression needs a codec config")
    trainer = Trainer(cfg)
    _, state = restore_run(trainer, args.workdir, args.checkpoint)
    return trainer.task.codec(state.inference_params)


def convert_channels(audio, channels: int):
    """(time, C) -> (time, channels): averaged to mono, or mono repeated (upstream's convert_audio)."""
    if audio.shape[1] == channels:
        return audio
    if channels == 1:
        return audio.mean(axis=1, keepdims=True)
    if audio.shape[1] == 1:
        return np.repeat(audio, channels, axis=1)
    raise ValueError(f"cannot turn {audio.shape[1]} channels into {channels}")


def encode(codec, wav_path, npz_path, bandwidth):
    from trainers.data import speech

    c = codec.config
    audio = speech.read_audio(wav_path, c.sample_rate, resample=True, mono=False)
    audio = convert_channels(audio, c.channels)
    frames = codec.encode(audio[None], bandwidth)
    arrays = {
        "sample_rate": c.sample_rate,
        "channels": c.channels,
        "length": len(audio),
        "bandwidth": bandwidth or 0.0,
        "segments": len(frames),
    }
    for i, (codes, scale) in enumerate(frames):
        arrays[f"codes_{i}"] = np.asarray(codes).astype(np.int16 if c.bins <= 2**15 else np.int32)
        if scale is not None:
            arrays[f"scale_{i}"] = np.asarray(scale)
    files.write_npz(npz_path, compressed=True, **arrays)
    k = frames[0][0].shape[1]
    print(
        f"{wav_path}: {len(audio) / c.sample_rate:.2f} s -> {npz_path}: {len(frames)} segment(s) of {k} codebooks "
        f"({k * np.log2(c.bins) * c.frame_rate / 1000:g} kbps)"
    )


def decode(codec, npz_path, wav_path):
    from trainers.data import speech

    c = codec.config
    try:
        data = np.load(npz_path)
        meta = {k: data[k].item() for k in ("sample_rate", "channels", "length", "segments")}
        frames = [
            (data[f"codes_{i}"].astype(np.int32), data[f"scale_{i}"] if f"scale_{i}" in data else None)
            for i in range(meta["segments"])
        ]
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{npz_path} is not a codes file written by `compress encode`: {e}") from e
    if (meta["sample_rate"], meta["channels"]) != (c.sample_rate, c.channels):
        raise InputError(
            f"{npz_path} holds {meta['sample_rate']} Hz, {meta['channels']}-channel codes; "
            f"the model is {c.sample_rate} Hz, {c.channels}-channel"
        )
    for codes, _ in frames:
        if codes.shape[1] > c.n_q or codes.max(initial=0) >= c.bins:
            raise InputError(
                f"{npz_path}: codes of shape {codes.shape} (max {codes.max()}) do not fit "
                f"{c.n_q} codebooks of {c.bins}"
            )
    audio = np.asarray(codec.decode(frames))[0, : meta["length"]]
    speech.write_wav(wav_path, audio[:, 0] if c.channels == 1 else audio, c.sample_rate)
    print(f"{npz_path} -> {wav_path}: {meta['length'] / c.sample_rate:.2f} s")


@command
def main(argv=None):
    args = _parser().parse_args(argv)
    codec = load_codec(args)
    try:
        if args.direction == "encode":
            encode(codec, args.input, args.output, args.bandwidth)
        else:
            decode(codec, args.input, args.output)
    except ValueError as e:
        sys.exit(str(e))


if __name__ == "__main__":
    main()
