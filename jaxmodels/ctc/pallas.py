"""CTC's forward recursion as one Pallas kernel: each batch row's program runs every frame in one
loop, where `lax.scan` pays a kernel launch and a loop test per frame on a GPU (docs: BENCHMARKS.md,
CTC loss). The backward recursion is the same kernel over each row's frames and states reversed.

The recursion is `loss._alphas`' (log space, each frame normalised to its maximum, padded frames
carrying the previous one); a program keeps alpha in registers and reads it shifted by one and
two states back through a scratch row whose first two columns hold -inf, with a barrier between
the write and the reads on a GPU. Off GPUs the kernel runs in Pallas' interpreter (the tests).
XLA does not partition a Pallas call: under a jit over several devices each would get the whole
batch, so call it inside `shard_map` over the batch there.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxmodels.ctc.loss import NEG_INF, _logsumexp3, _normalise


def _kernel(emit_ref, skip_ref, valid_ref, alphas_ref, scale_ref, row_ref, *, frames, width, barrier):
    """One row: emit_ref (B, T, W) log-probabilities of each state's symbol, skip_ref (B, W) 1
    where a state may be entered from two back, valid_ref (B, T) 1 on real frames -> alphas_ref
    (B, T, W), scale_ref (B,) the summed maxima removed; row_ref (B, 2W) scratch."""
    b = pl.program_id(0)
    states = pl.ds(0, width)
    columns = jax.lax.broadcasted_iota(jnp.int32, (width,), 0)
    skip = skip_ref[b, states] > 0
    row_ref[b, pl.ds(0, 2)] = jnp.full((2,), NEG_INF, row_ref.dtype)
    # A path starts in the leading blank or the first label.
    alpha, scale = _normalise(jnp.where(columns < 2, emit_ref[b, 0, states], NEG_INF))
    alphas_ref[b, 0, states] = alpha

    def frame(t, carry):
        alpha, scale = carry
        row_ref[b, pl.ds(2, width)] = alpha
        barrier()
        one_back = row_ref[b, pl.ds(1, width)]
        two_back = jnp.where(skip, row_ref[b, states], NEG_INF)
        barrier()  # every read done before the next frame writes the row
        nxt, top = _normalise(_logsumexp3(alpha, one_back, two_back) + emit_ref[b, t, states])
        valid = valid_ref[b, t] > 0
        alpha = jnp.where(valid, nxt, alpha)
        alphas_ref[b, t, states] = alpha
        return alpha, scale + jnp.where(valid, top, 0.0)

    _, scale = jax.lax.fori_loop(1, frames, frame, (alpha, scale))
    scale_ref[b] = scale


def forward_variables(emit, skip, valid):
    """`loss._alphas` batch-major: emit (B, T, S) (float32 on a GPU), skip (B, S) bool, valid (B, T)
    bool -> (alphas (B, T, S), log_scale (B,)); in Pallas' interpreter off GPUs."""
    interpret = jax.default_backend() != "gpu"
    batch, frames, num_states = emit.shape
    width = max(2, 1 << (num_states - 1).bit_length())  # a power of two, as Triton's blocks
    pad = width - num_states
    emit = jnp.pad(emit, ((0, 0), (0, 0), (0, pad)), constant_values=NEG_INF)
    skip = jnp.pad(skip, ((0, 0), (0, pad))).astype(jnp.int32)
    barrier = (lambda: None) if interpret else _gpu_barrier
    kernel = functools.partial(_kernel, frames=frames, width=width, barrier=barrier)
    alphas, scale, _ = pl.pallas_call(
        kernel,
        grid=(batch,),
        out_shape=(
            jax.ShapeDtypeStruct((batch, frames, width), emit.dtype),
            jax.ShapeDtypeStruct((batch,), emit.dtype),
            jax.ShapeDtypeStruct((batch, 2 * width), emit.dtype),
        ),
        interpret=interpret,
    )(emit, skip, valid.astype(jnp.int32))
    return alphas[:, :, :num_states], scale


def _gpu_barrier():
    from jax.experimental.pallas import triton as plgpu

    plgpu.debug_barrier()
