"""wav2vec 2.0 pretraining (task: wav2vec2): contrastive prediction of quantized speech.

A step masks spans of the encoder's frames (ssl.span_mask), and the encoder's output at each
masked frame must pick the quantized features of that frame (ssl.Wav2Vec2Pretraining's Gumbel
quantizer, sampling at a temperature annealed from step to step) among num_negatives
distractors, other masked frames of the same utterance; plus the diversity loss over the
codebooks and the penalty on the convolutional features (ssl.wav2vec2_loss). fairseq's Base
settings by default. Eval reports, with one fixed mask and fixed distractors and the
quantizer's argmax, eval/contrastive_loss and eval/accuracy (how often the true target wins).
Batches by duration as the ctc task's (data.batch_seconds).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp

from jaxmodels import ssl
from trainers.data.speech import AudioDataConfig
from trainers.tasks._pretraining import AudioTransform, SpeechPretraining


@dataclass
class Wav2vec2Config:
    """Masking, the quantizer and the loss (transformers' Wav2Vec2Config names where it has them)."""

    mask_prob: float = 0.65
    mask_length: int = 10
    min_masks: int = 2
    num_negatives: int = 100
    num_codevector_groups: int = 2
    num_codevectors_per_group: int = 320
    codevector_dim: int = 256
    proj_codevector_dim: int = 256
    contrastive_logits_temperature: float = 0.1
    diversity_loss_weight: float = 0.1
    feature_penalty: float = 10.0
    feature_grad_mult: float = 0.1
    feat_quantizer_dropout: float = 0.0  # dropout on the quantizer's input (fairseq's dropout_features)
    # The Gumbel-softmax temperature: max(start * decay^step, end) (fairseq's latent_temp).
    gumbel_temperature: list[float] = field(default_factory=lambda: [2.0, 0.5, 0.999995])


SECTIONS = {"data": AudioDataConfig, "wav2vec2": Wav2vec2Config}


class Wav2vec2Task(SpeechPretraining):
    def __init__(self, cfg):
        super().__init__(cfg)
        w = cfg.wav2vec2
        if len(w.gumbel_temperature) != 3:
            raise ValueError(f"wav2vec2.gumbel_temperature: (start, end, decay), not {w.gumbel_temperature}")
        heads = (w.num_codevector_groups, w.num_codevectors_per_group, w.codevector_dim, w.proj_codevector_dim)
        self.model = ssl.Wav2Vec2Pretraining(self.encoder, *heads, w.feature_grad_mult, w.feat_quantizer_dropout)
        self.train_transform = AudioTransform(self.max_samples, cfg.data.resample, self.hop, random_crop=True)
        self.eval_transform = AudioTransform(self.max_samples, cfg.data.resample, self.hop, random_crop=False)

    def init(self, rng, batch):
        audio = batch["audio"][:, :400]
        return self.model.init({"params": rng}, audio, None, jnp.zeros((audio.shape[0], 1), bool))

    def convert_weights(self, state_dict):
        """A transformers Wav2Vec2ForPreTraining's state_dict (all of it), or an encoder's (the
        quantizer and projections keep their initialisation)."""
        if "quantizer.codevectors" in state_dict:
            return ssl.from_torch(state_dict, self.model)
        return {"params": {"encoder": ssl.from_torch(state_dict, self.encoder)["params"]}}

    def _terms(self, params, batch, key, temperature=None):
        """(outputs, negatives, masked valid frames); with a temperature (training) the quantizer
        samples and the encoder's dropout acts, without it the quantizer takes the argmax."""
        w = self.cfg.wav2vec2
        k_mask, k_negatives, k_gumbel = jax.random.split(key, 3)
        k_dropout = jax.random.fold_in(key, 3)
        paddings, valid, mask = self.masked_spans(batch, k_mask, w.mask_prob, w.mask_length, w.min_masks)
        mask = mask & valid
        training = temperature is not None  # the quantizer samples and the encoder's dropout acts
        rng, rngs = (k_gumbel, {"dropout": k_dropout}) if training else (None, {})
        outputs = self.model.apply({"params": params}, batch["audio"], paddings, mask, temperature, rng, rngs=rngs)
        negatives = ssl.sample_negatives(k_negatives, mask, w.num_negatives)
        return outputs, negatives, mask

    def loss(self, params, batch, rng, step):
        w = self.cfg.wav2vec2
        start, end, decay = w.gumbel_temperature
        temperature = jnp.maximum(start * jnp.float32(decay) ** step, end)
        outputs, negatives, mask = self._terms(params, batch, rng, temperature)
        codes = w.num_codevector_groups * w.num_codevectors_per_group
        args = (w.contrastive_logits_temperature, w.diversity_loss_weight, w.feature_penalty)
        loss, metrics = ssl.wav2vec2_loss(outputs, negatives, mask, codes, *args)
        return loss, {**{f"train/{k}": v for k, v in metrics.items()}, "train/gumbel_temperature": temperature}

    def eval_outputs(self, params, batch):
        outputs, negatives, mask = self._terms(params, batch, jax.random.PRNGKey(0))
        t = self.cfg.wav2vec2.contrastive_logits_temperature
        logits = ssl.contrastive_logits(outputs["predicted"], outputs["targets"], negatives, t)
        w = mask.astype(jnp.float32)
        return {
            "masked_ce": (-jax.nn.log_softmax(logits)[..., 0] * w).sum(1),
            "masked_correct": ((logits.argmax(-1) == 0) * w).sum(1),
            "masked_frames": w.sum(1),
        }

    def eval_metrics(self, outputs):
        n = max(float(outputs["masked_frames"].sum()), 1.0)
        return {
            "contrastive_loss": float(outputs["masked_ce"].sum()) / n,
            "accuracy": float(outputs["masked_correct"].sum()) / n,
        }


TASK = Wav2vec2Task
