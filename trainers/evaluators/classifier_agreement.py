"""Classifier agreement: the share of class-conditional samples that a trained classifier
assigns to the class they were drawn for (an Inception-score-like check for small data).

Reads the outputs "samples" (N, H, W, C) in [-1, 1] and "sample_labels" (N,); adds
"sample_predictions". The classifier is a classification run (its directory).
"""

from dataclasses import dataclass

import jax
import numpy as np
from PIL import Image

from trainers.config import EvalConfig
from trainers.runs import load_run


@dataclass
class ClassifierAgreementConfig(EvalConfig):
    run: str = ""  # a classification run's directory


def to_uint8(samples):
    return np.clip(np.round((np.asarray(samples) + 1.0) * 127.5), 0, 255).astype(np.uint8)


class ClassifierAgreement:
    def __init__(self, cfg: ClassifierAgreementConfig, task):
        trainer, self.params = load_run(cfg.run, "classification", "classifier of evals: classifier_agreement")
        self.size = trainer.cfg.data.image_size
        self.predict = jax.jit(lambda p, images: trainer.task.logits(p, images).argmax(-1))

    def __call__(self, outputs, params):
        images = to_uint8(outputs["samples"])
        if images.shape[-1] == 1:
            images = images.repeat(3, axis=-1)
        # Resized as the classifier's training images were (DigitsSource: bilinear from 8x8).
        images = np.stack(
            [np.asarray(Image.fromarray(im).resize((self.size, self.size), Image.BILINEAR)) for im in images]
        )
        predicted = np.asarray(self.predict(self.params, images))
        agreement = float(np.mean(predicted == outputs["sample_labels"]))
        return {"classifier_agreement": agreement}, {"sample_predictions": predicted}


CONFIG, EVALUATOR = ClassifierAgreementConfig, ClassifierAgreement
