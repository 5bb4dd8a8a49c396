"""python -m trainers.continue_speech PROMPT.wav OUT.wav --semantic RUN --coarse RUN --fine RUN [options]

Continues a spoken prompt as AudioLM does: the prompt's semantic units (made as `trainers.extract`
made the semantic run's: the k-means tokenizer and its encoder, or the S3 tokenizer) are continued by the
semantic stage; the coarse stage draws the first codebooks of the prompt's continuation from
all the semantic units, after the prompt's own coarse codes; the fine stage draws the other
codebooks from all the coarse ones; the codec of the coarse run's codes (`trainers.extract
codes`) decodes the whole. OUT.wav holds the prompt's decoding followed by the continuation.

--seconds sets the continuation's length; the semantic stage draws as many units as the
prompt holds per second of it (after deduplication) times --seconds.
"""

import argparse
import json
import math
import os

import numpy as np

from trainers.cli import InputError, command


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m trainers.continue_speech",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", help="a WAV (or FLAC) file")
    p.add_argument("output", help="the WAV to write")
    for stage in ("semantic", "coarse", "fine"):
        p.add_argument(f"--{stage}", required=True, help=f"the {stage} stage's run directory")
    p.add_argument("--seconds", type=float, default=2.0, help="the continuation's length")
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    return p


def _index(folder: str, split: str) -> dict:
    with open(os.path.join(folder, split, "index.json")) as f:
        return json.load(f)


class Stage:
    """A trained AudioLM stage: its task (sizes, vocabularies) and params, and cached sampling."""

    def __init__(self, workdir: str, stage: str):
        import jax

        from jaxmodels.speechlm import audiolm
        from trainers.runs import load_run

        trainer, self.params = load_run(workdir, "audiolm", f"{stage} stage")
        self.task = trainer.task
        if self.task.cfg.audiolm.stage != stage:
            raise InputError(f"--{stage} {workdir} is a {self.task.cfg.audiolm.stage} stage")
        self._generate = jax.jit(
            audiolm.generate, static_argnums=0, static_argnames=("max_new_tokens", "temperature", "top_k")
        )

    def generate(self, prefix, prompt, new: int, rng, args):
        """`new` tokens after the prompt, conditioned on the prefix (1-D token arrays)."""
        prefix = np.asarray(prefix, np.int32).reshape(-1)
        padded = prefix if len(prefix) else np.zeros(1, np.int32)
        return np.asarray(
            self._generate(
                self.task.model,
                self.params,
                padded[None],
                np.array([len(prefix)]),
                np.asarray(prompt, np.int32)[None],
                np.array([len(prompt)]),
                rng,
                max_new_tokens=new,
                temperature=args.temperature,
                top_k=args.top_k,
            )
        )[0]


@command
def main(argv=None):
    import jax

    from trainers.data import speech
    from trainers.tasks.audiolm import deduplicate, flatten_codes
    from trainers.tasks.codec import load_codec

    args = _parser().parse_args(argv)
    semantic, coarse, fine = (Stage(getattr(args, s), s) for s in ("semantic", "coarse", "fine"))
    a = coarse.task.cfg.audiolm
    tokenizer = semantic.task.folders[semantic.task.cfg.data.train_split]["units"].unit_tokenizer()
    codes_meta = _index(a.codes, coarse.task.cfg.data.train_split)
    codec = load_codec(codes_meta["codec"], codes_meta["codec_model"])
    q, n_q, bins = a.coarse_quantizers, codec.config.n_q, codec.config.bins

    # The prompt's tokens: units (deduplicated as the stages were trained) and codes.
    wav16 = speech.read_audio(args.prompt, resample=True)
    units = np.asarray(tokenizer([wav16])[0])
    units = deduplicate(units) if semantic.task.cfg.audiolm.deduplicate else units
    wav = speech.read_audio(args.prompt, codec.config.sample_rate, resample=True)
    (codes, _), *_ = codec.encode(wav[None, :, None])
    codes = np.asarray(codes)[0].T  # (frames, n_q)
    frames = math.ceil(args.seconds * codec.config.frame_rate)
    new_units = max(1, round(len(units) * args.seconds * speech.SAMPLE_RATE / len(wav16)))

    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(args.seed), 3)
    more_units = semantic.generate([], units, new_units, k1, args)
    all_units = np.concatenate([units, more_units])
    new_coarse = coarse.generate(all_units, flatten_codes(codes[:, :q], bins), frames * q, k2, args)
    all_coarse = np.concatenate([codes[:, :q], new_coarse.reshape(frames, q) - bins * np.arange(q)])
    new_fine = fine.generate(
        flatten_codes(all_coarse, bins), flatten_codes(codes[:, q:], bins), frames * (n_q - q), k3, args
    )
    all_fine = np.concatenate([codes[:, q:], new_fine.reshape(frames, n_q - q) - bins * np.arange(n_q - q)])
    whole = np.concatenate([all_coarse, all_fine], axis=1)  # (frames, n_q)
    audio = np.asarray(codec.decode([(whole.T[None], None)]))[0, :, 0]
    speech.write_wav(args.output, np.clip(audio, -1, 1), codec.config.sample_rate)
    print(
        f"{args.prompt}: {len(wav16) / speech.SAMPLE_RATE:.2f} s, {len(units)} units -> {args.output}: "
        f"{len(more_units)} more units, {frames} more frames of {n_q} codebooks, "
        f"{len(audio) / codec.config.sample_rate:.2f} s in all"
    )


if __name__ == "__main__":
    main()
