"""k-means for semantic tokens (HuBERT's targets, AudioLM's semantic stage), in JAX.

k-means++ seeding (Arthur & Vassilvitskii 2007) and mini-batch updates (Sculley 2010, as
scikit-learn's MiniBatchKMeans: a centroid is the running mean of every point assigned
to it so far). The functions are pure and jit-able; a batch sharded over devices (rows
split) needs nothing else: the per-centroid sums are reductions XLA splits across them.
Frames become tokens with `tokenize`, optionally with repeats collapsed (the
"deduplicated" units of GSLM / AudioLM).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def squared_distances(x, centroids):
    """(N, K) squared Euclidean distances of points (N, D) to centroids (K, D), float32."""
    x, centroids = x.astype(jnp.float32), centroids.astype(jnp.float32)
    d2 = (x * x).sum(-1)[:, None] - 2.0 * x @ centroids.T + (centroids * centroids).sum(-1)[None, :]
    return jnp.maximum(d2, 0.0)


def assign(x, centroids):
    """(labels (N,) int32, squared distance to the nearest centroid (N,))."""
    d2 = squared_distances(x, centroids)
    labels = jnp.argmin(d2, axis=-1).astype(jnp.int32)
    return labels, jnp.take_along_axis(d2, labels[:, None], axis=-1)[:, 0]


@functools.partial(jax.jit, static_argnames=("k",))
def kmeans_plus_plus(rng, x, k: int):
    """k centroids (k, D) drawn from x (N, D): the first uniformly, each next with probability ∝ d²."""
    x = x.astype(jnp.float32)
    rng, key = jax.random.split(rng)
    first = x[jax.random.randint(key, (), 0, x.shape[0])]
    centroids = jnp.zeros((k, x.shape[1]), jnp.float32).at[0].set(first)
    d2 = ((x - first) ** 2).sum(-1)

    def body(i, state):
        centroids, d2, rng = state
        rng, key = jax.random.split(rng)
        # log(0) = -inf: points already chosen (or duplicates of them) are never drawn again
        c = x[jax.random.categorical(key, jnp.log(d2))]
        return centroids.at[i].set(c), jnp.minimum(d2, ((x - c) ** 2).sum(-1)), rng

    centroids, _, _ = jax.lax.fori_loop(1, k, body, (centroids, d2, rng))
    return centroids


@jax.jit
def minibatch_update(centroids, counts, batch, weights=None):
    """One mini-batch step: (centroids, counts, mean squared distance of the batch before the step).

    counts (K,) are the points each centroid has absorbed; weights (N,) (0 for padding rows)
    default to ones.
    """
    labels, d2 = assign(batch, centroids)
    weights = jnp.ones(batch.shape[0], jnp.float32) if weights is None else weights.astype(jnp.float32)
    onehot = jax.nn.one_hot(labels, centroids.shape[0], dtype=jnp.float32) * weights[:, None]
    n = onehot.sum(0)
    sums = onehot.T @ batch.astype(jnp.float32)
    counts = counts + n
    centroids = centroids + (sums - n[:, None] * centroids) / jnp.maximum(counts, 1.0)[:, None]
    inertia = (d2 * weights).sum() / jnp.maximum(weights.sum(), 1.0)
    return centroids, counts, inertia


def fit(rng, x, k: int, *, steps: int = 100, batch_size: int = 1024, init_size: int = 0, sharding=None):
    """Centroids (k, D) of points x (N, D) (a numpy array or a jax array) by mini-batch k-means.

    k-means++ on a random sample of init_size points (3 x batch_size by default, as
    scikit-learn), then `steps` batches drawn without replacement (a fresh permutation per
    pass). `sharding`, a jax.sharding for (batch_size, D) arrays, places each batch
    across devices.
    """
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means: {n} points cannot make {k} clusters")
    init_rng, rng = jax.random.split(rng)
    init_size = min(n, init_size or 3 * batch_size)
    sample = np.asarray(jax.random.choice(init_rng, n, (init_size,), replace=False))
    centroids = kmeans_plus_plus(rng, jnp.asarray(x[sample]), k)
    counts = jnp.zeros(k, jnp.float32)
    batch_size = min(batch_size, n)
    order = np.zeros(0, np.int64)
    for _ in range(steps):
        if len(order) < batch_size:
            rng, key = jax.random.split(rng)
            order = np.asarray(jax.random.permutation(key, n))
        indices, order = order[:batch_size], order[batch_size:]
        batch = jnp.asarray(x[indices])  # only the batch goes to the device
        if sharding is not None:
            batch = jax.device_put(batch, sharding)
        centroids, counts, _ = minibatch_update(centroids, counts, batch)
    return centroids


@functools.partial(jax.jit, static_argnames=("deduplicate",))
def tokenize(features, valid, centroids, deduplicate: bool = False):
    """Frames (batch, T, D) with valid (batch, T) -> (tokens (batch, T) int32, lengths (batch,)).

    With `deduplicate`, runs of one token become a single token (shifted left; the rest
    of a row is 0 past its length).
    """
    b, t, d = features.shape
    labels = assign(features.reshape(b * t, d), centroids)[0].reshape(b, t)
    if not deduplicate:
        return jnp.where(valid, labels, 0), valid.sum(-1).astype(jnp.int32)
    previous = jnp.concatenate([jnp.full((b, 1), -1, jnp.int32), labels[:, :-1]], axis=1)
    keep = valid & (labels != previous)
    slots = jnp.where(keep, jnp.cumsum(keep, axis=1) - 1, t)  # dropped frames go to a slot past the end
    tokens = jnp.zeros((b, t + 1), jnp.int32).at[jnp.arange(b)[:, None], slots].set(labels)[:, :t]
    return tokens, keep.sum(-1).astype(jnp.int32)
