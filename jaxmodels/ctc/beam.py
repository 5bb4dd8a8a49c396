"""CTC prefix beam search, batched on device as one scan over frames.

Each hypothesis is a prefix (a collapsed labelling) with two scores: the log-probability
of the frames so far ending in blank (p_b) and ending in its last label (p_nb), so that
"a a" (two labels, a blank between) and "a" (one label, repeated) stay apart. Per frame:
  stay          prefix unchanged:  p_b' = (p_b + p_nb) y_blank,  p_nb' = p_nb y_last
  extend by c:  p_nb' = (p_b if c == last else p_b + p_nb) y_c
and an extension that equals a prefix already on the beam is merged into it (its
probability added), never kept twice. Prefixes are identified by a 64-bit rolling hash
(two 32-bit lanes), so merging is a (K x K) comparison of hashes per frame; the labels
are recovered at the end from per-frame back-pointers. Candidate tokens per frame are
the `token_candidates` most probable (all of them for exact search on small problems).

Shallow fusion: an optional n-gram over the CTC tokens (jaxmodels.ctc.lm; a word LM
when the tokens are words) adds `lm_weight * log P_lm(token | history) + length_bonus`
per emitted token and `lm_weight * log P_lm(</s> | history)` at the end.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxmodels.ctc.loss import NEG_INF

_HASH_MULTIPLIERS = (0x9E3779B1, 0x85EBCA77)


class BeamSearchResult(NamedTuple):
    """labels (B, K, T) left-aligned, padded with 0; lengths (B, K); scores (B, K) best
    first (log-probability, plus the LM terms when fused; -inf for empty beam slots);
    frames (B, K, T): the frame at which each label was first emitted."""

    labels: jax.Array
    lengths: jax.Array
    scores: jax.Array
    frames: jax.Array


class _Beam(NamedTuple):
    p_b: jax.Array  # (B, K)
    p_nb: jax.Array
    lm_score: jax.Array
    hash: jax.Array  # (B, K, 2) uint32
    parent_hash: jax.Array
    last: jax.Array  # last label, -1 for the empty prefix
    lm_state: object  # the LM's state pytree, leaves (B, K)


def _extend_hash(h, token):
    mult = jnp.asarray(_HASH_MULTIPLIERS, jnp.uint32)
    return h * mult + (token.astype(jnp.uint32)[..., None] + jnp.uint32(1))


def beam_search(
    logits,
    logit_paddings,
    beam_size: int,
    blank_id: int = 0,
    token_candidates: int | None = None,
    lm=None,
    lm_weight: float = 0.5,
    length_bonus: float = 0.0,
) -> BeamSearchResult:
    """Device-side batched prefix beam search over unnormalised logits (B, T, V)."""
    batch, frames, vocab = logits.shape
    num_tokens = min(token_candidates or beam_size, vocab - 1)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    frame_valid = logit_paddings < 0.5
    k = beam_size
    fused = lm is not None

    lm_init = lm.initial_state() if fused else jnp.int32(0)
    beam = _Beam(
        p_b=jnp.full((batch, k), NEG_INF).at[:, 0].set(0.0),
        p_nb=jnp.full((batch, k), NEG_INF),
        lm_score=jnp.zeros((batch, k)),
        hash=jnp.zeros((batch, k, 2), jnp.uint32),
        parent_hash=jnp.zeros((batch, k, 2), jnp.uint32),
        last=jnp.full((batch, k), -1, jnp.int32),
        lm_state=jax.tree.map(lambda leaf: jnp.full((batch, k), leaf), lm_init),
    )
    rows = jnp.arange(batch)[:, None]

    def step(beam, inputs):
        y, valid = inputs  # (B, V), (B,)
        total = jnp.logaddexp(beam.p_b, beam.p_nb)
        alive = total > NEG_INF
        y_blank = y[:, blank_id][:, None]
        stay_b = total + y_blank
        y_last = jnp.take_along_axis(y, jnp.maximum(beam.last, 0), axis=1)
        stay_nb = jnp.where(beam.last >= 0, beam.p_nb + y_last, NEG_INF)

        y_tokens, tokens = jax.lax.top_k(y.at[:, blank_id].set(NEG_INF), num_tokens)  # (B, M)
        from_prefix = jnp.where(tokens[:, None, :] == beam.last[:, :, None], beam.p_b[:, :, None], total[:, :, None])
        ext_nb = from_prefix + y_tokens[:, None, :]  # (B, K, M)
        if fused:
            states = jax.tree.map(lambda leaf: leaf[:, :, None], beam.lm_state)
            lm_logp, lm_next = lm.score(states, tokens[:, None, :])
            ext_lm = beam.lm_score[:, :, None] + lm_weight * lm_logp + length_bonus
        else:
            lm_next = jax.tree.map(lambda leaf: jnp.broadcast_to(leaf[:, :, None], ext_nb.shape), beam.lm_state)
            ext_lm = jnp.broadcast_to(beam.lm_score[:, :, None], ext_nb.shape)

        # Extension (prefix i, token c) is hypothesis j itself when j's parent is i and
        # j's last label is c: its probability joins j's p_nb and the extension goes.
        # Prefixes on the beam are distinct, so j has at most one such (i, c).
        same_parent = jnp.all(beam.hash[:, None, :, :] == beam.parent_hash[:, :, None, :], axis=-1)  # (B, j, i)
        same_parent &= alive[:, None, :]
        same_token = tokens[:, None, :] == beam.last[:, :, None]  # (B, j, M)
        merges = jnp.any(same_parent, axis=2) & jnp.any(same_token, axis=2) & alive & (beam.last >= 0)
        parent_of, token_of = jnp.argmax(same_parent, axis=2), jnp.argmax(same_token, axis=2)  # (B, j)
        merged_nb = jnp.where(merges, ext_nb[rows, parent_of, token_of], NEG_INF)
        stay_nb = jnp.logaddexp(stay_nb, merged_nb)
        ext_nb = ext_nb.at[rows, jnp.where(merges, parent_of, k), token_of].set(NEG_INF, mode="drop")

        stay_score = jnp.logaddexp(stay_b, stay_nb) + beam.lm_score
        ext_score = ext_nb + ext_lm
        scores = jnp.concatenate([stay_score, ext_score.reshape(batch, -1)], axis=1)
        _, chosen = jax.lax.top_k(scores, k)  # (B, K)
        is_ext = chosen >= k
        parent = jnp.where(is_ext, (chosen - k) // num_tokens, chosen)
        token = jnp.where(is_ext, jnp.take_along_axis(tokens, (chosen - k) % num_tokens, axis=1), -1)
        ext_index = jnp.maximum(chosen - k, 0)

        def pick(stay, ext):
            return jnp.where(
                is_ext, jnp.take_along_axis(ext.reshape(batch, -1), ext_index, axis=1), stay[rows, parent]
            )

        parent_hash = beam.hash[rows, parent]
        new = _Beam(
            p_b=jnp.where(is_ext, NEG_INF, stay_b[rows, parent]),
            p_nb=pick(stay_nb, ext_nb),
            lm_score=pick(beam.lm_score, ext_lm),
            hash=jnp.where(is_ext[..., None], _extend_hash(parent_hash, token), parent_hash),
            parent_hash=jnp.where(is_ext[..., None], parent_hash, beam.parent_hash[rows, parent]),
            last=jnp.where(is_ext, token, beam.last[rows, parent]),
            lm_state=jax.tree.map(pick, beam.lm_state, lm_next),
        )
        keep = valid[:, None]
        new = jax.tree.map(lambda n, o: jnp.where(keep if n.ndim == 2 else keep[..., None], n, o), new, beam)
        parent = jnp.where(keep, parent, jnp.arange(k)[None])
        token = jnp.where(keep, token, -1)
        return new, (parent.astype(jnp.int32), token.astype(jnp.int32))  # int32 under x64 too: top_k's dtype

    beam, (parents, tokens) = jax.lax.scan(step, beam, (jnp.swapaxes(log_probs, 0, 1), frame_valid.T))

    final = jnp.logaddexp(beam.p_b, beam.p_nb) + beam.lm_score
    if fused:
        final = final + lm_weight * lm.final_score(beam.lm_state)
    scores, order = jax.lax.top_k(final, k)

    def back(index, step_pointers):
        parent, token = step_pointers
        return jnp.take_along_axis(parent, index, axis=1), jnp.take_along_axis(token, index, axis=1)

    # Follow the back-pointers from the last frame (a forward scan over reversed
    # pointers; XLA:CPU runs reversed scans slowly).
    _, emitted = jax.lax.scan(back, order, (parents[::-1], tokens[::-1]))
    emitted = jnp.moveaxis(emitted[::-1], 0, 2)  # (B, K, T): label emitted at each frame, or -1
    keep = emitted >= 0
    position = jnp.where(keep, jnp.cumsum(keep, axis=2) - 1, frames)
    b_idx, k_idx = jnp.arange(batch)[:, None, None], jnp.arange(k)[None, :, None]
    labels = jnp.zeros_like(emitted).at[b_idx, k_idx, position].set(emitted, mode="drop")
    at_frame = (
        jnp.zeros_like(emitted)
        .at[b_idx, k_idx, position]
        .set(jnp.broadcast_to(jnp.arange(frames, dtype=emitted.dtype), emitted.shape), mode="drop")
    )
    return BeamSearchResult(labels=labels, lengths=jnp.sum(keep, axis=2), scores=scores, frames=at_frame)


def prefix_beam_search(
    logits,
    logit_paddings,
    beam_size: int,
    blank_id: int = 0,
    num_results: int | None = None,
    **options,
) -> list[list[tuple[tuple[int, ...], float]]]:
    """For each utterance its N best labellings as (labels, log_probability) pairs, best
    first (N = num_results, default beam_size; fewer when fewer prefixes exist).
    `options`: token_candidates, lm, lm_weight, length_bonus (see beam_search)."""
    result = jax.device_get(_jitted_beam_search(logits, logit_paddings, beam_size, blank_id, **options))
    n = num_results or beam_size
    out = []
    for labels, lengths, scores in zip(result.labels, result.lengths, result.scores):
        best = [(tuple(int(x) for x in labels[i, : lengths[i]]), float(scores[i])) for i in range(min(n, beam_size))]
        out.append([hypothesis for hypothesis in best if hypothesis[1] > float("-inf")])
    return out


_jitted_beam_search = jax.jit(
    beam_search, static_argnames=("beam_size", "blank_id", "token_candidates", "lm_weight", "length_bonus")
)
