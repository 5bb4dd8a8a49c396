"""Best paths through the CTC graph: forced alignment of known labels (Viterbi, as
torchaudio.functional.forced_align, batched) and greedy (best-path) decoding."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxmodels.ctc.loss import NEG_INF, _emissions


class Alignment(NamedTuple):
    """frame_labels (B, T): the symbol of the best path at each frame (blank included;
    blank on padded frames); frame_scores (B, T): its log-probability (0 on padded
    frames); token_starts, token_ends (B, U): the first frame of each label and one past
    its last (0 at label padding); score (B,): log-probability of the whole path, -inf
    where the labels cannot fit the frames."""

    frame_labels: jax.Array
    frame_scores: jax.Array
    token_starts: jax.Array
    token_ends: jax.Array
    score: jax.Array


def forced_align(logits, logit_paddings, labels, label_paddings, blank_id: int = 0) -> Alignment:
    """Viterbi alignment of `labels` to the frames. logits (B, T, V) unnormalised or
    log-probabilities (log_softmax is applied; it is idempotent); paddings 1.0 at padding."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
    labels = labels.astype(jnp.int32)
    frames, num_states = logits.shape[1], 2 * labels.shape[1] + 1
    frame_valid = (logit_paddings < 0.5).T  # (T, B)
    num_labels = jnp.sum(label_paddings < 0.5, axis=1).astype(jnp.int32)
    ext, skip, emit = _emissions(log_probs, labels, blank_id)

    def shift(x, n):
        return jnp.concatenate([jnp.full((x.shape[0], n), NEG_INF, x.dtype), x[:, :-n]], axis=1)

    def step(delta, inputs):
        e, valid = inputs
        options = jnp.stack([delta, shift(delta, 1), jnp.where(skip, shift(delta, 2), NEG_INF)])
        choice = jnp.argmax(options, axis=0).astype(jnp.int8)  # how many states back
        nxt = jnp.max(options, axis=0) + e
        return jnp.where(valid[:, None], nxt, delta), jnp.where(valid[:, None], choice, 0)

    first = jnp.where(jnp.arange(num_states) < 2, emit[0], NEG_INF)
    delta, choices = jax.lax.scan(step, first, (emit[1:], frame_valid[1:]))

    end = 2 * num_labels
    tail = jnp.take_along_axis(delta, jnp.stack([end, jnp.maximum(end - 1, 0)], 1), axis=1)
    tail = tail.at[:, 1].set(jnp.where(num_labels > 0, tail[:, 1], NEG_INF))
    score = jnp.max(tail, axis=1)
    final_state = jnp.where(tail[:, 1] > tail[:, 0], end - 1, end)

    def back(state, choice):
        previous = state - jnp.take_along_axis(choice, state[:, None], axis=1)[:, 0].astype(jnp.int32)
        return previous, state

    # Time-reversed forward scan: XLA:CPU runs reversed scans slowly. Padded frames
    # have choice 0, so the final state holds through them.
    first_state, states = jax.lax.scan(back, final_state, choices[::-1])
    states = jnp.concatenate([first_state[None], states[::-1]]).T  # (B, T) state per frame

    valid = frame_valid.T
    symbol = jnp.take_along_axis(ext, states, axis=1)
    frame_labels = jnp.where(valid, symbol, blank_id)
    frame_scores = jnp.where(valid, jnp.take_along_axis(log_probs, symbol[..., None], axis=2)[..., 0], 0.0)

    label_state = 2 * jnp.arange(labels.shape[1]) + 1
    on_token = (states[:, :, None] == label_state) & valid[:, :, None]  # (B, T, U)
    starts = jnp.argmax(on_token, axis=1)
    ends = frames - jnp.argmax(on_token[:, ::-1], axis=1)
    present = label_paddings < 0.5
    return Alignment(
        frame_labels=frame_labels,
        frame_scores=frame_scores,
        token_starts=jnp.where(present, starts, 0).astype(jnp.int32),
        token_ends=jnp.where(present, ends, 0).astype(jnp.int32),
        score=score,
    )


def paddings_from_lengths(lengths, size: int):
    """(B,) lengths -> (B, size) paddings: 1.0 at and past each length (optax's convention)."""
    return (jnp.arange(size)[None] >= lengths[:, None]).astype(jnp.float32)


def greedy_decode(logits, logit_paddings, blank_id: int = 0):
    """Best-path decoding: the most probable symbol per frame, repeats merged, blanks
    removed. Returns labels (B, T) left-aligned, padded with 0, and label_paddings (B, T)."""
    best = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    valid = logit_paddings < 0.5
    previous = jnp.pad(best, ((0, 0), (1, 0)), constant_values=-1)[:, :-1]
    keep = valid & (best != blank_id) & (best != previous)
    position = jnp.where(keep, jnp.cumsum(keep, axis=1) - 1, best.shape[1])  # off the end: dropped
    rows = jnp.arange(best.shape[0])[:, None]
    labels = jnp.zeros_like(best).at[rows, position].set(best, mode="drop")
    count = jnp.sum(keep, axis=1)
    return labels, paddings_from_lengths(count, best.shape[1])
