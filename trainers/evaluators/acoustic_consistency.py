"""Acoustic consistency as AudioLM measures it (Borsos et al. 2023: a speaker classifier names
the speaker of continuations of 3 s prompts): whether the continuation keeps the prompt's voice.

    evals:   # on the fine stage's config: the last of the three to train
      - name: acoustic_consistency
        semantic: runs/audiolm_semantic
        coarse: runs/audiolm_coarse
        speaker: runs/speaker.npz
        prompts: 50

The first `prompts` (prompt, target) pairs of the eval split (speech.prompt_pairs: held-out
voices) are enrolled by the speaker embedder's embedding of each target recording. Each prompt
is continued by `seconds` through the semantic and coarse runs and this run's fine stage
(trainers.continue_speech's Continuation, sampled at `temperature`, a key per pair), and the
continuation alone (after the prompt's decoding) is named as the enrolled speaker nearest to
it (cosine). acoustic_consistency is the share named right (chance 1 / prompts), beside
acoustic_consistency_reference: the prompt recordings themselves named so (the ceiling).
acoustic_consistency_similarity is the mean cosine between each continuation and its pair's
enrolled target, the TTS evals' speaker similarity (its ceiling the same cosine of the prompts,
acoustic_consistency_similarity_reference).
"""

from dataclasses import dataclass

import jax
import numpy as np

from trainers.config import ConfigError, EvalConfig
from trainers.data import speech


@dataclass
class AcousticConsistencyConfig(EvalConfig):
    semantic: str = ""  # the semantic stage's run
    coarse: str = ""  # the coarse stage's run
    speaker: str = ""  # a speaker embedder's .npz (python -m trainers.speaker)
    prompts: int = 50
    seconds: float = 2.0
    temperature: float = 0.8
    seed: int = 0


class AcousticConsistency:
    def __init__(self, cfg: AcousticConsistencyConfig, task):
        from trainers.continue_speech import Stage
        from trainers.speaker import SpeakerEmbedder
        from trainers.tasks.audiolm import AudioLMTask

        if not isinstance(task, AudioLMTask) or task.cfg.audiolm.stage != "fine":
            raise ConfigError("evals: acoustic_consistency runs on an AudioLM fine stage (audiolm.stage fine)")
        if not (cfg.semantic and cfg.coarse and cfg.speaker):
            raise ConfigError("evals: acoustic_consistency needs semantic, coarse (runs) and speaker (an embedder)")
        self.cfg, self.task = cfg, task
        self.stages = Stage.load(cfg.semantic, "semantic"), Stage.load(cfg.coarse, "coarse")
        self.embed = SpeakerEmbedder.load(cfg.speaker)
        self.pairs = speech.prompt_pairs(task.eval_source().records)[: cfg.prompts]
        self.enrolled = self.embed([speech.read_audio(t["source"], resample=True) for _, t in self.pairs])
        self.prompts = [speech.read_audio(p["source"], resample=True) for p, _ in self.pairs]
        self.reference = self.scored(self.prompts, "_reference")
        self._continuation = None

    def cosines(self, waves) -> np.ndarray:
        """(waveforms, pairs): each 16 kHz waveform's cosine to each pair's enrolled target."""
        return self.embed(waves) @ self.enrolled.T

    def named(self, waves) -> np.ndarray:
        """The index of the enrolled speaker nearest to each waveform (16 kHz)."""
        return np.argmax(self.cosines(waves), axis=1)

    def scored(self, waves, suffix: str = "") -> dict:
        """The share of one waveform per pair named right, and their mean cosine to their own pair's target."""
        cosines = self.cosines(waves)
        return {
            f"acoustic_consistency{suffix}": float(np.mean(np.argmax(cosines, axis=1) == np.arange(len(self.pairs)))),
            f"acoustic_consistency_similarity{suffix}": float(np.mean(np.diag(cosines))),
        }

    def continuations(self, params) -> list:
        """The continuation alone (16 kHz) of each pair's prompt, with the fine stage's `params`."""
        from trainers.continue_speech import Continuation, Stage

        if self._continuation is None:
            self._continuation = Continuation(*self.stages, Stage(self.task, params))
        continuation = self._continuation
        continuation.fine.params = params
        keys = jax.random.split(jax.random.PRNGKey(self.cfg.seed), len(self.pairs))
        out = []
        for (prompt, _), wav16, key in zip(self.pairs, self.prompts, keys):
            wav = speech.read_audio(prompt["source"], continuation.sample_rate, resample=True)
            audio, start, _, _ = continuation(wav16, wav, self.cfg.seconds, key, self.cfg.temperature)
            out.append(speech.resampled(audio[start:], continuation.sample_rate, speech.SAMPLE_RATE))
        return out

    def __call__(self, outputs, params):
        return {**self.scored(self.continuations(params)), **self.reference}, {}


CONFIG, EVALUATOR = AcousticConsistencyConfig, AcousticConsistency
