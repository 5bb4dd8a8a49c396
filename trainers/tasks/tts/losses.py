"""The training and teacher-forced evaluation losses: the AR, the NAR on a random stage, or the
delayed LM."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmodels import speechlm
from jaxmodels.speechlm.transformer import lengths_mask


def masked_mean(values, mask):
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def cross_entropy(logits, targets, mask):
    """(mean loss, accuracy) over the positions where mask is set (targets elsewhere may be out of range)."""
    targets = jnp.where(mask > 0, targets, 0)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return masked_mean(nll, mask), masked_mean((jnp.argmax(logits, -1) == targets).astype(jnp.float32), mask)


class Losses:
    """The models' initialisation and losses of a TTSTask."""

    # -- model ------------------------------------------------------------------------
    def init(self, rng, batch):
        keys = jax.random.split(rng, len(self.models))
        return {
            "params": {
                name: model.init(key, *self._example(name, batch, key)[0])["params"]
                for (name, model), key in zip(self.models.items(), keys)
            }
        }

    def _example(self, name, batch, rng):
        """(positional inputs of model `name`, its targets, where they are scored) for a batch
        (NAR: its random stage and prompt split)."""
        text, codes, frames = batch["text"], batch["codes"], batch["frames"]
        text_valid = lengths_mask(batch["text_length"], text.shape[1])
        if name == "nar":
            prompt_frames, stage = self._nar_split(frames, rng)
            slots = jnp.arange(codes.shape[1])[None]
            targets = jnp.take_along_axis(codes, stage[:, None, None], axis=2)[..., 0]
            scored = (slots >= prompt_frames[:, None]) & (slots < frames[:, None])
            return (text, text_valid, codes, slots < frames[:, None], prompt_frames, stage), targets, scored
        if name == "ar":
            m = self.models["ar"]
            inputs, targets, scored = speechlm.ar_training_inputs(codes[..., 0], frames, m.bos, m.eos, m.group_size)
            valid = scored.reshape(scored.shape[0], -1, m.group_size).any(-1)  # per group of codes
        else:
            inputs, targets, scored = speechlm.delayed_training_inputs(codes, frames, self.codebook_size)
            valid = jnp.arange(inputs.shape[1])[None] <= (frames + self.num_codebooks - 1)[:, None]
        positions = jnp.broadcast_to(jnp.arange(valid.shape[1]), valid.shape)
        if name == "ar" and self.aligned:  # no EOS to learn: a row ends when its last word does
            scored = scored & (jnp.arange(scored.shape[1])[None] < frames[:, None])
            words = batch["audio_words"]
            return (
                (
                    inputs,
                    positions,
                    valid,
                    text,
                    text_valid,
                    batch["text_words"],
                    words,
                    speechlm.word_progress(words),
                ),
                targets,
                scored,
            )
        return (inputs, positions, valid, text, text_valid), targets, scored

    def _nar_split(self, frames, rng):
        """Per utterance: how many of its first frames (1 .. half) are the prompt, the rest the
        target, and a random stage 1..K-1 (0-based codebook index)."""
        k_prompt, k_stage = jax.random.split(rng)
        b = frames.shape[0]
        half = jnp.maximum(frames // 2, 1)
        prompt_frames = jnp.minimum(jax.random.randint(k_prompt, (b,), 0, 2**30) % half + 1, frames - 1)
        return prompt_frames, jax.random.randint(k_stage, (b,), 1, self.num_codebooks)

    def _losses(self, params, batch, rng, train):
        """(total loss, {metric: value}) of the models on the batch: each model's loss and accuracy."""
        total, metrics = 0.0, {}
        for (name, model), key in zip(self.models.items(), jax.random.split(rng, len(self.models))):
            k_split, k_drop = jax.random.split(key)
            rows = batch
            if name == "ar" and train and self.cfg.tts.guidance_dropout:  # the AR's example draws nothing from k_split
                rows = self._without_text(batch, k_split)
            args, targets, scored = self._example(name, rows, k_split)
            logits = model.apply(
                {"params": params[name]}, *args, deterministic=not train, rngs={"dropout": k_drop} if train else {}
            )
            mask = batch["mask"].reshape((-1,) + (1,) * (scored.ndim - 1))
            if name == "ar" and self.aligned:
                logits, advance = logits
                moves, moved = speechlm.advance_targets(rows["audio_words"], batch["frames"] // model.group_size)
                moved = moved * mask
                loss = masked_mean(optax.sigmoid_binary_cross_entropy(advance, moves), moved)
                metrics["ar_advance_loss"] = loss
                metrics["ar_advance_accuracy"] = masked_mean(((advance > 0) == (moves > 0)).astype(jnp.float32), moved)
                total += loss
            loss, metrics[f"{name}_accuracy"] = cross_entropy(logits, targets, scored * mask)
            metrics[f"{name}_loss"] = loss
            total += loss
        return total, metrics

    def _without_text(self, batch, rng):
        """The batch with its text (and word alignment) taken from tts.guidance_dropout of its
        rows: the unconditional model of classifier-free guidance, as generate_ar runs it. Those
        rows' `advance` is not scored (their words are -1)."""
        dropped = jax.random.bernoulli(rng, self.cfg.tts.guidance_dropout, batch["text_length"].shape)
        rows = dict(batch, text_length=jnp.where(dropped, 0, batch["text_length"]))
        if self.aligned:
            rows["audio_words"] = jnp.where(dropped[:, None], -1, batch["audio_words"])
        return rows

    def loss(self, params, batch, rng, step):
        total, metrics = self._losses(params, batch, rng, train=True)
        return total, {f"train/{k}": v for k, v in metrics.items()}

    def eval_outputs(self, params, batch):
        # Per-example values: each row as its own batch of one, so the split's mean is exact.
        rows = jax.tree.map(lambda x: x[:, None], batch)
        keys = jax.random.split(jax.random.PRNGKey(0), batch["mask"].shape[0])
        return jax.vmap(lambda row, key: self._losses(params, row, key, train=False)[1])(rows, keys)

    def eval_metrics(self, outputs):
        return {k: float(np.mean(v)) for k, v in outputs.items()}
