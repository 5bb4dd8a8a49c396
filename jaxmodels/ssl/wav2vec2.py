"""wav2vec 2.0's pretraining (transformers' Wav2Vec2ForPreTraining, fairseq's Wav2Vec2Model):
a Gumbel product quantizer of the convolutional features gives each frame's target, the
encoder reads the features with masked spans and predicts the masked frames' targets
against distractors drawn from the same utterance's masked frames.

    loss = contrastive + diversity_loss_weight * diversity + feature_penalty * mean(features^2)

the contrastive term the cross-entropy of the true target among num_negatives distractors
under cosine similarity / contrastive_logits_temperature, averaged over masked frames; the
diversity term (G V - perplexity) / (G V), the perplexity of the quantizer's choices over
the masked frames, summed over its G groups of V codes. (transformers sums both over the
masked frames: its loss is this one times their number.)
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.nn import Dense
from jaxmodels.ssl.model import SSLEncoder, dropout, pretraining_features


class GumbelVectorQuantizer(nn.Module):
    """G groups of V code vectors of codevector_dim / G: each group picks one code per frame
    (training: a straight-through Gumbel-softmax sample at `temperature`; eval: the argmax),
    the frame's vector their concatenation. Returns (vectors, perplexity over the frames
    `where` marks: of the soft distribution in training, of the choices in eval)."""

    num_groups: int
    num_vars: int
    codevector_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, where, temperature=2.0, rng=None):
        g, v = self.num_groups, self.num_vars
        codes = self.param(
            "codevectors",
            nn.with_logical_partitioning(nn.initializers.uniform(1.0), (None, "vocab", None)),
            (1, g * v, self.codevector_dim // g),
        )
        logits = Dense(g * v, ("conv_in", "vocab"), dtype=self.dtype, name="weight_proj")(x)
        logits = logits.astype(jnp.float32).reshape(x.shape[:2] + (g, v))
        hard = jax.nn.one_hot(jnp.argmax(logits, -1), v)
        if rng is None:
            probs, marginal_of = hard, hard
        else:
            soft = jax.nn.softmax((logits + jax.random.gumbel(rng, logits.shape)) / temperature)
            sample = jax.nn.one_hot(jnp.argmax(soft, -1), v)
            probs, marginal_of = sample + soft - jax.lax.stop_gradient(soft), jax.nn.softmax(logits)
        w = where.astype(jnp.float32)[..., None, None]
        marginal = (marginal_of * w).sum((0, 1)) / jnp.maximum(w.sum(), 1.0)
        perplexity = jnp.exp(-jnp.sum(jax.scipy.special.xlogy(marginal, marginal), -1)).sum()
        vectors = jnp.einsum("btgv,gvd->btgd", probs, codes.reshape(g, v, -1)).reshape(x.shape[:2] + (-1,))
        return vectors.astype(self.dtype), perplexity


class Wav2Vec2Pretraining(nn.Module):
    """The encoder with the quantizer and the two projections to proj_codevector_dim
    (transformers' names: quantizer, project_hid, project_q)."""

    encoder: SSLEncoder
    num_codevector_groups: int = 2
    num_codevectors_per_group: int = 320
    codevector_dim: int = 256
    proj_codevector_dim: int = 256
    feature_grad_mult: float = 0.1
    feat_quantizer_dropout: float = 0.0  # on the quantizer's input, in training (fairseq's dropout_features)

    def setup(self):
        dtype = self.encoder.dtype
        self.quantizer = GumbelVectorQuantizer(
            self.num_codevector_groups, self.num_codevectors_per_group, self.codevector_dim, dtype
        )
        self.project_hid = Dense(self.proj_codevector_dim, ("embed", "mlp"), dtype=dtype)
        self.project_q = Dense(self.proj_codevector_dim, ("embed", "mlp"), dtype=dtype)

    def hidden_states(self, audio, paddings=None, mask=None):
        return self.encoder.hidden_states(audio, paddings, mask)

    def __call__(self, audio, paddings, mask, temperature=2.0, rng=None):
        """{"predicted", "targets": (B, T', proj_codevector_dim), "valid", "perplexity",
        "features_penalty"}: the projected encoder output and projected quantized features of
        every frame; with `rng` the quantizer samples (training), without it takes the argmax."""
        features, valid, penalty = pretraining_features(self.encoder, audio, paddings, self.feature_grad_mult)
        last = self.encoder.last(self.encoder.encode(features, valid, mask))
        quantized = dropout(self, self.feat_quantizer_dropout, features)
        vectors, perplexity = self.quantizer(quantized, mask & valid, temperature, rng)
        return {
            "predicted": self.project_hid(last),
            "targets": self.project_q(vectors),
            "valid": valid,
            "perplexity": perplexity,
            "features_penalty": penalty,
        }


def sample_negatives(key, mask, num_negatives: int):
    """(B, T, num_negatives) frame indices: for each frame, distractors drawn uniformly from
    the other masked frames of its row (with replacement, as fairseq and transformers)."""
    n = mask.sum(1, keepdims=True)
    order = jnp.argsort(~mask, axis=1, stable=True)  # each row's masked frames first, in order
    rank = jnp.cumsum(mask, axis=1) - 1  # a masked frame's place among them
    draw = jax.random.randint(key, mask.shape + (num_negatives,), 0, jnp.maximum(n - 1, 1)[..., None])
    draw = draw + (draw >= rank[..., None])  # skip the frame itself
    draw = jnp.minimum(draw, mask.shape[1] - 1)
    return jnp.take_along_axis(order, draw.reshape(mask.shape[0], -1), 1).reshape(draw.shape)


def contrastive_logits(predicted, targets, negatives, temperature: float = 0.1):
    """(B, T, 1 + K) logits of each frame's own target (first) and its distractors `negatives`
    (B, T, K): cosine similarity / temperature, -inf where a distractor equals the target (as
    upstream)."""
    b, t, _ = targets.shape
    distractors = jnp.take_along_axis(targets[:, None], negatives.reshape(b, 1, -1, 1), 2)
    distractors = distractors.reshape(b, t, -1, targets.shape[-1]).astype(jnp.float32)
    candidates = jnp.concatenate([targets[:, :, None].astype(jnp.float32), distractors], 2)
    unit = lambda v: v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-8)  # noqa: E731
    logits = jnp.einsum("btd,btkd->btk", unit(predicted.astype(jnp.float32)), unit(candidates)) / temperature
    same = jnp.all(distractors == candidates[:, :, :1], -1)
    return logits.at[..., 1:].set(jnp.where(same, -jnp.inf, logits[..., 1:]))


def wav2vec2_loss(outputs, negatives, mask, num_codevectors: int, temperature=0.1, diversity_weight=0.1, penalty=10.0):
    """(loss, {"contrastive_loss", "diversity_loss", "accuracy", "perplexity", "features_penalty"})
    of Wav2Vec2Pretraining's outputs, `mask` the masked valid frames."""
    logits = contrastive_logits(outputs["predicted"], outputs["targets"], negatives, temperature)
    w = mask.astype(jnp.float32)
    n = jnp.maximum(w.sum(), 1.0)
    contrastive = (-jax.nn.log_softmax(logits)[..., 0] * w).sum() / n
    accuracy = ((logits.argmax(-1) == 0) * w).sum() / n
    diversity = (num_codevectors - outputs["perplexity"]) / num_codevectors
    loss = contrastive + diversity_weight * diversity + penalty * outputs["features_penalty"]
    return loss, {
        "contrastive_loss": contrastive,
        "diversity_loss": diversity,
        "accuracy": accuracy,
        "perplexity": outputs["perplexity"],
        "features_penalty": outputs["features_penalty"],
    }
