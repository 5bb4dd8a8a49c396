"""CTC loss (Graves et al., 2006) as a forward-backward pass in log space.

Batch-major, as optax.ctc_loss: logits (B, T, V) unnormalised, paddings 1.0 on padded
frames / label positions. The extended label sequence interleaves blanks,
`blank l1 blank l2 ... lU blank` (S = 2U + 1 states); the forward variables alpha are
computed by a scan over time, and the gradient by the matching backward scan (a custom
VJP), so backpropagation keeps one (T, B, S) array rather than every intermediate of
an autodiffed scan.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf
# Frames per iteration of the two recursions' loops, by backend. A GPU pays a fixed cost
# for each iteration (kernel launches, the loop test read back by the host): 16 frames per
# iteration took an H200's loss + gradient (benchmarks/ctc_loss.py) from 7.8 to 3.5 ms;
# XLA:CPU runs the unrolled loop slower (59 against 84 ms).
SCAN_UNROLL = {"gpu": 16}


def _unroll():
    return SCAN_UNROLL.get(jax.default_backend(), 1)


def _logsumexp3(a, b, c):
    m = jnp.maximum(jnp.maximum(a, b), c)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    return m + jnp.log(jnp.exp(a - m) + jnp.exp(b - m) + jnp.exp(c - m))


def _shift(x, n):
    """x[..., s - n], with -inf shifted in at the left."""
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(n, 0)], constant_values=NEG_INF)[..., : x.shape[-1]]


def extended_labels(labels, blank_id):
    """(B, U) labels -> (B, 2U + 1) with blanks interleaved, and whether state s may be
    entered from s - 2 (a label that differs from the previous label)."""
    batch, num_labels = labels.shape
    ext = jnp.full((batch, 2 * num_labels + 1), blank_id, labels.dtype).at[:, 1::2].set(labels)
    previous = jnp.pad(labels, ((0, 0), (1, 0)), constant_values=-1)[:, :-1]
    skip = jnp.zeros(ext.shape, bool).at[:, 1::2].set(labels != previous)
    return ext, skip


def _normalise(x):
    """x minus its maximum over states, and that maximum (0 where all are -inf)."""
    top = jnp.max(x, axis=-1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    return x - top, top[..., 0]


def _alphas(emit, skip, frame_valid):
    """Forward variables, time-major: emit (T, B, S) log-probs of each state's symbol.
    alpha[t, b, s] includes the emission at t, and is kept with its maximum over states
    at 0: the (B,) sum of the maxima removed is returned beside it. Log-probabilities of
    long utterances reach -1e3 and more, where float32 keeps only ~1e-4 absolute; the
    normalised values keep the differences between states (what the gradient is made
    of) to float32 precision. Padded frames carry alpha unchanged."""
    # A path starts in the leading blank or the first label.
    first, log_scale = _normalise(jnp.where(jnp.arange(emit.shape[2]) < 2, emit[0], NEG_INF))

    def step(carry, inputs):
        alpha, log_scale = carry
        e, valid = inputs
        nxt, top = _normalise(_logsumexp3(alpha, _shift(alpha, 1), jnp.where(skip, _shift(alpha, 2), NEG_INF)) + e)
        alpha = jnp.where(valid[:, None], nxt, alpha)
        return (alpha, log_scale + jnp.where(valid, top, 0.0)), alpha

    (_, log_scale), rest = jax.lax.scan(step, (first, log_scale), (emit[1:], frame_valid[1:]), unroll=_unroll())
    return jnp.concatenate([first[None], rest]), log_scale


def _betas(emit, skip, frame_valid, last_state):
    """Backward variables, emission included: beta[t, b, s] = log-probability of frames
    t.. given state s at frame t, up to a factor per frame (normalised as the alphas,
    and only used in per-frame ratios). `last_state` (B,) is 2U; the path may end in 2U or
    2U - 1. Computed as a forward scan over time-reversed inputs (XLA:CPU runs a
    reversed scan several times slower)."""
    num_states = emit.shape[2]
    states = jnp.arange(num_states)
    end = (states == last_state[:, None]) | (states == last_state[:, None] - 1)
    skip_from = jnp.pad(skip, ((0, 0), (0, 2)))[:, 2:]  # may s + 2 be entered from s

    def unshift(x, n):
        return jnp.concatenate([x[:, n:], jnp.full((x.shape[0], n), NEG_INF, x.dtype)], axis=1)

    def step(carry, inputs):
        beta, seen = carry  # seen: a valid frame has been met, counting from the end
        e, valid = inputs
        nxt = _logsumexp3(beta, unshift(beta, 1), jnp.where(skip_from, unshift(beta, 2), NEG_INF))
        # The last valid frame starts the recursion from the end states.
        start = valid & ~seen
        nxt = jnp.where(start[:, None], jnp.where(end, 0.0, NEG_INF), nxt) + e
        nxt = _normalise(nxt)[0]
        beta = jnp.where(valid[:, None], nxt, beta)
        return (beta, seen | valid), beta

    init = (jnp.full(emit.shape[1:], NEG_INF, emit.dtype), jnp.zeros(emit.shape[1], bool))
    _, betas = jax.lax.scan(step, init, (emit[::-1], frame_valid[::-1]), unroll=_unroll())
    return betas[::-1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _nll(log_probs, frame_valid, labels, num_labels, blank_id, implementation):
    return _forward(log_probs, frame_valid, labels, num_labels, blank_id, implementation)[0]


def _emissions(log_probs, labels, blank_id):
    """Time-major (T, B, S) log-probabilities of each extended-label state's symbol."""
    ext, skip = extended_labels(labels, blank_id)
    log_probs = jnp.swapaxes(log_probs, 0, 1)
    blank = jnp.broadcast_to(log_probs[:, :, blank_id, None], log_probs.shape[:2] + (labels.shape[1],))
    label = jnp.take_along_axis(log_probs, labels[None], axis=2)
    emit = jnp.stack([blank, label], axis=3).reshape(log_probs.shape[:2] + (-1,))
    return ext, skip, jnp.concatenate([emit, log_probs[:, :, blank_id, None]], axis=2)


def _betas_pallas(emit, skip, frame_valid, num_labels):
    """`_betas` through the Pallas kernel: the forward recursion over each row's valid frames
    reversed and its states reversed (state s at 2U - s, so the end states come first and a
    state enterable from s + 2 becomes one enterable from two back)."""
    from jaxmodels.ctc import pallas  # imported where used: it builds on this module's helpers

    batch, frames, num_states = frame_valid.shape + emit.shape[2:]
    lengths = jnp.sum(frame_valid, axis=1)
    t_index = lengths[:, None] - 1 - jnp.arange(frames)[None]  # (B, T), < 0 past the row's frames
    s_index = 2 * num_labels[:, None] - jnp.arange(num_states)[None]  # (B, S), < 0 past its states
    inside = (t_index >= 0)[:, :, None] & (s_index >= 0)[:, None, :]

    def reverse(x):  # (B, T, S) -> (B, T, S) read at the reversed frames and states; an involution
        x = jnp.take_along_axis(x, jnp.maximum(t_index, 0)[:, :, None], axis=1)
        return jnp.where(inside, jnp.take_along_axis(x, jnp.maximum(s_index, 0)[:, None, :], axis=2), NEG_INF)

    skip_from = jnp.take_along_axis(skip, jnp.clip(s_index + 2, 0, num_states - 1), axis=1)
    valid = jnp.arange(frames)[None] < lengths[:, None]
    betas, _ = pallas.forward_variables(reverse(jnp.swapaxes(emit, 0, 1)), skip_from, valid)
    return jnp.swapaxes(reverse(betas), 0, 1)


def _forward(log_probs, frame_valid, labels, num_labels, blank_id, implementation):
    ext, skip, emit = _emissions(log_probs, labels, blank_id)
    valid_tm = frame_valid.T
    if implementation == "pallas":
        from jaxmodels.ctc import pallas

        alphas, log_scale = pallas.forward_variables(jnp.swapaxes(emit, 0, 1), skip, frame_valid)
        alphas = jnp.swapaxes(alphas, 0, 1)
    else:
        alphas, log_scale = _alphas(emit, skip, valid_tm)
    last = alphas[-1]  # padded frames carry alpha, so the last row is alpha at length - 1
    end = 2 * num_labels
    tail = jnp.take_along_axis(last, jnp.stack([end, jnp.maximum(end - 1, 0)], 1), axis=1)
    tail = tail.at[:, 1].set(jnp.where(num_labels > 0, tail[:, 1], NEG_INF))
    log_likelihood = jnp.logaddexp(tail[:, 0], tail[:, 1]) + log_scale
    return -log_likelihood, (alphas, emit, ext, skip, valid_tm)


def _nll_fwd(log_probs, frame_valid, labels, num_labels, blank_id, implementation):
    nll, res = _forward(log_probs, frame_valid, labels, num_labels, blank_id, implementation)
    return nll, (res, num_labels, log_probs.shape)


def _nll_bwd(blank_id, implementation, saved, g):
    (alphas, emit, ext, skip, valid_tm), num_labels, shape = saved
    if implementation == "pallas":
        betas = _betas_pallas(emit, skip, valid_tm.T, num_labels)
    else:
        betas = _betas(emit, skip, valid_tm, 2 * num_labels)
    # Occupancy of state s at frame t: P(path through (t, s)) / P(labels). Every path
    # is in one state per frame, so it is a softmax over states of alpha + beta - emit,
    # which cancels the per-frame normalisations (and is NaN where the labels cannot
    # fit the frames, as torch's gradient is).
    occupancy = jax.nn.softmax(alphas + betas - emit, axis=2)
    occupancy = jnp.where(valid_tm[:, :, None], occupancy, 0.0)
    # d(-log p)/d log_probs[t, k] = -(occupancy summed over the states that emit k):
    # the blank states (even s) sum to the blank column, label states scatter-add.
    blank = jnp.sum(occupancy[:, :, 0::2], axis=2)  # (T, B)
    label = jnp.swapaxes(occupancy[:, :, 1::2], 0, 1)  # (B, T, U)
    labels = ext[:, 1::2]

    def per_sequence(occ, lab, blk):
        return jnp.zeros(shape[1:], occ.dtype).at[:, lab].add(-occ).at[:, blank_id].add(-blk)

    grad = jax.vmap(per_sequence)(label, labels, blank.T)
    # Zero cotangent (zero_infinity, or a loss left out) gives zero gradient, even where
    # an infeasible sequence made the occupancy NaN; elsewhere NaN stays, as torch's.
    g = g[:, None, None]
    return jnp.where(g == 0, 0.0, grad * g), None, None, None


_nll.defvjp(_nll_fwd, _nll_bwd)


def ctc_loss(
    logits,
    logit_paddings,
    labels,
    label_paddings,
    blank_id: int = 0,
    reduction: str = "none",
    zero_infinity: bool = False,
    implementation: str = "scan",
):
    """Negative log-likelihood of each label sequence under CTC.

    logits (B, T, V) unnormalised scores (float32 or bfloat16; computed in float32, or
    float64 under jax_enable_x64); logit_paddings (B, T) and label_paddings (B, U) are
    1.0 at padding. Labels must be left-aligned (padding only at the end).
    reduction: "none" -> (B,), "sum", or "mean" (as torch: each loss divided by its
    target length, at least 1, then averaged). zero_infinity: an infeasible target
    (longer than its input allows) gets loss 0 and gradient 0 instead of inf.
    implementation: "scan" (`lax.scan` over the frames) or "pallas" (jaxmodels.ctc.pallas: each
    row's frames in one kernel on a GPU, Pallas' interpreter elsewhere).
    """
    if implementation not in ("scan", "pallas"):
        raise ValueError(f"implementation must be 'scan' or 'pallas', got {implementation!r}")
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")
    if logits.ndim != 3 or labels.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"expected logits (B, T, V) and labels (B, U), got {logits.shape} and {labels.shape}")
    compute_dtype = jnp.promote_types(logits.dtype, jnp.float32)
    log_probs = jax.nn.log_softmax(logits.astype(compute_dtype), axis=-1)
    frame_valid = logit_paddings < 0.5
    num_labels = jnp.sum(label_paddings < 0.5, axis=1).astype(jnp.int32)
    labels = labels.astype(jnp.int32)
    nll = _nll(log_probs, frame_valid, labels, num_labels, blank_id, implementation)
    if zero_infinity:
        nll = jnp.where(jnp.isinf(nll), 0.0, nll)
    if reduction == "none":
        return nll
    if reduction == "sum":
        return jnp.sum(nll)
    return jnp.mean(nll / jnp.maximum(num_labels, 1).astype(nll.dtype))
