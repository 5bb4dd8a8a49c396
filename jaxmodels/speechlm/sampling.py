"""Drawing the next token from logits: temperature, top-k and nucleus (top-p) sampling."""

import jax
import jax.numpy as jnp


def sample_logits(rng, logits, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """Token ids (...,) from logits (..., vocab); temperature 0 is argmax.

    top_k > 0 keeps the k most likely tokens; top_p < 1 keeps the smallest set of most
    likely tokens whose probability reaches top_p (always at least the first). Both may
    be combined (top-k first, as audiocraft and HF do).
    """
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k > 0:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the more likely tokens
        # the least likely kept logit: the last whose predecessors hold less than top_p
        kept = jnp.sum(before < top_p, axis=-1, keepdims=True)
        threshold = jnp.take_along_axis(ordered, kept - 1, axis=-1)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)  # token ids are int32, x64 too
