"""Speaker similarity of generated speech: the mean cosine between speaker embeddings of
each generated utterance and its prompt, as CosyVoice and VALL-E report it (with WavLM-TDNN;
here the embedder of python -m trainers.speaker, trained on a corpus's voices).

Reads the outputs "tts_prompt" and "tts_generated" -> speaker_similarity, and
"tts_reference" (the real recording of each sentence: the ceiling) ->
speaker_similarity_reference.
"""

from dataclasses import dataclass

import numpy as np

from trainers.config import EvalConfig
from trainers.speaker import SpeakerEmbedder


@dataclass
class SpeakerSimilarityConfig(EvalConfig):
    weights: str = ""  # a speaker embedder's .npz (python -m trainers.speaker)


class SpeakerSimilarity:
    def __init__(self, cfg: SpeakerSimilarityConfig, task):
        self.embed = SpeakerEmbedder.load(cfg.weights)

    def __call__(self, outputs, params):
        prompt = self.embed(outputs["tts_prompt"])
        metrics = {}
        for key, name in (("tts_generated", "speaker_similarity"), ("tts_reference", "speaker_similarity_reference")):
            if key in outputs:
                metrics[name] = float(np.mean((self.embed(outputs[key]) * prompt).sum(-1)))
        return metrics, {}


CONFIG, EVALUATOR = SpeakerSimilarityConfig, SpeakerSimilarity
