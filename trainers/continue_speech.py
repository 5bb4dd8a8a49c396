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

    def __init__(self, task, params):
        import jax

        from jaxmodels.speechlm import audiolm

        self.task, self.params = task, params
        self._generate = jax.jit(
            audiolm.generate, static_argnums=0, static_argnames=("max_new_tokens", "temperature", "top_k")
        )

    @classmethod
    def load(cls, workdir: str, stage: str) -> "Stage":
        from trainers.runs import load_run

        trainer, params = load_run(workdir, "audiolm", f"{stage} stage")
        if trainer.task.cfg.audiolm.stage != stage:
            raise InputError(f"--{stage} {workdir} is a {trainer.task.cfg.audiolm.stage} stage")
        return cls(trainer.task, params)

    def generate(self, prefix, prompt, new: int, rng, temperature: float, top_k: int):
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
                temperature=temperature,
                top_k=top_k,
            )
        )[0]


class Continuation:
    """AudioLM's hierarchy: a prompt's units continued by the semantic stage, its coarse codes by
    the coarse stage from all the units, its fine codes by the fine stage from all the coarse
    ones, and the whole decoded by the codec of the coarse stage's codes."""

    def __init__(self, semantic: Stage, coarse: Stage, fine: Stage):
        from trainers.tasks.codec import load_codec

        for stage, name in ((semantic, "semantic"), (coarse, "coarse"), (fine, "fine")):
            if stage.task.cfg.audiolm.stage != name:
                raise InputError(f"the {name} stage given is a {stage.task.cfg.audiolm.stage} stage")
        self.semantic, self.coarse, self.fine = semantic, coarse, fine
        self.tokenizer = semantic.task.folders[semantic.task.cfg.data.train_split]["units"].unit_tokenizer()
        codes_meta = _index(coarse.task.cfg.audiolm.codes, coarse.task.cfg.data.train_split)
        self.codec = load_codec(codes_meta["codec"], codes_meta["codec_model"])
        self.sample_rate = self.codec.config.sample_rate

    def __call__(self, wav16, wav, seconds: float, rng, temperature: float = 0.8, top_k: int = 0):
        """(audio at the codec's rate: the prompt's decoding, then `seconds` of continuation; the
        sample where the continuation starts; the prompt's units; the new units) of a prompt given
        at 16 kHz (`wav16`, the units') and at the codec's rate (`wav`)."""
        import jax

        from trainers.data import speech
        from trainers.tasks.audiolm import deduplicate, flatten_codes

        c = self.codec.config
        q, n_q, bins = self.coarse.task.cfg.audiolm.coarse_quantizers, c.n_q, c.bins
        units = np.asarray(self.tokenizer([wav16])[0])
        units = deduplicate(units) if self.semantic.task.cfg.audiolm.deduplicate else units
        (codes, _), *_ = self.codec.encode(wav[None, :, None])
        codes = np.asarray(codes)[0].T  # (frames, n_q)
        frames = math.ceil(seconds * c.frame_rate)
        new_units = max(1, round(len(units) * seconds * speech.SAMPLE_RATE / len(wav16)))
        sampling = dict(temperature=temperature, top_k=top_k)

        k1, k2, k3 = jax.random.split(rng, 3)
        more_units = self.semantic.generate([], units, new_units, k1, **sampling)
        all_units = np.concatenate([units, more_units])
        new_coarse = self.coarse.generate(all_units, flatten_codes(codes[:, :q], bins), frames * q, k2, **sampling)
        all_coarse = np.concatenate([codes[:, :q], new_coarse.reshape(frames, q) - bins * np.arange(q)])
        prompt_fine = flatten_codes(codes[:, q:], bins)
        new_fine = self.fine.generate(flatten_codes(all_coarse, bins), prompt_fine, frames * (n_q - q), k3, **sampling)
        all_fine = np.concatenate([codes[:, q:], new_fine.reshape(frames, n_q - q) - bins * np.arange(n_q - q)])
        whole = np.concatenate([all_coarse, all_fine], axis=1)  # (frames, n_q)
        audio = np.clip(np.asarray(self.codec.decode([(whole.T[None], None)]))[0, :, 0], -1, 1)
        return audio, len(codes) * c.hop_length, units, more_units


@command
def main(argv=None):
    import jax

    from trainers.data import speech

    args = _parser().parse_args(argv)
    continuation = Continuation(*(Stage.load(getattr(args, s), s) for s in ("semantic", "coarse", "fine")))
    wav16 = speech.read_audio(args.prompt, resample=True)
    wav = speech.read_audio(args.prompt, continuation.sample_rate, resample=True)
    rng = jax.random.PRNGKey(args.seed)
    audio, _, units, more_units = continuation(wav16, wav, args.seconds, rng, args.temperature, args.top_k)
    speech.write_wav(args.output, audio, continuation.sample_rate)
    print(
        f"{args.prompt}: {len(wav16) / speech.SAMPLE_RATE:.2f} s, {len(units)} units -> {args.output}: "
        f"{len(more_units)} more units, {args.seconds:g} s more of {continuation.codec.config.n_q} codebooks, "
        f"{len(audio) / continuation.sample_rate:.2f} s in all"
    )


if __name__ == "__main__":
    main()
