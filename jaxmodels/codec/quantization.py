"""Residual vector quantization (SoundStream's Algorithm 1) as EnCodec's
encodec/quantization/{core_vq,vq}.py, with AudioCraft's training fixes.

The codebooks are not trained by gradients: each is an exponential moving average of
the vectors assigned to its codes. Their state is a dict of arrays stacked over the
n_q quantizers (upstream's buffers of ``quantizer.vq.layers.<k>._codebook``):
  embed (n_q, bins, dim), embed_avg (n_q, bins, dim), cluster_size (n_q, bins), inited (n_q,)
and every function here is pure: training returns the new state.
"""

import math

import jax
import jax.numpy as jnp


def bandwidth_per_quantizer(bins: int, frame_rate: float) -> float:
    """Bits per second of one codebook: log2(bins) bits per frame."""
    return math.log2(bins) * frame_rate


def num_quantizers(bandwidth: float, n_q: int, bins: int, frame_rate: float) -> int:
    """Codebooks for a target bandwidth in kbps (upstream: floor(bw * 1000 / bits per second of one), at least 1)."""
    if not bandwidth or bandwidth <= 0:
        return n_q
    return int(max(1, math.floor(bandwidth * 1000 / bandwidth_per_quantizer(bins, frame_rate))))


def init_state(key, n_q: int, bins: int, dim: int, kmeans_init: bool = True):
    """Fresh codebooks: zeros to be set by k-means on the first batch, or kaiming-uniform (upstream's two inits)."""
    if kmeans_init:
        embed = jnp.zeros((n_q, bins, dim), jnp.float32)
    else:
        bound = math.sqrt(6 / dim)  # kaiming_uniform_ on a (bins, dim) tensor: fan_in = dim
        embed = jax.random.uniform(key, (n_q, bins, dim), jnp.float32, -bound, bound)
    return {
        "embed": embed,
        "embed_avg": embed,
        "cluster_size": jnp.zeros((n_q, bins), jnp.float32),
        "inited": jnp.full((n_q,), not kmeans_init),
    }


def nearest_code(embed, x):
    """Index of the nearest code of (bins, dim) for each row of x (..., dim), with upstream's distance."""
    x = x.astype(jnp.float32)
    hi = jax.lax.Precision.HIGHEST  # codes must equal upstream's float32 argmax, also on TPU/GPU
    dist = -(
        jnp.sum(x * x, -1, keepdims=True)
        - 2 * jnp.einsum("...d,kd->...k", x, embed, precision=hi)
        + jnp.sum(embed * embed, -1)
    )
    return jnp.argmax(dist, axis=-1)


def fsq_dims(codebook_size: int) -> int:
    """The dimensions of a three-level FSQ with codebook_size codes (3 ** dims)."""
    dims = round(math.log(codebook_size, 3))
    if dims < 1 or 3**dims != codebook_size:
        raise ValueError(f"codebook_size {codebook_size}: FSQ at three levels makes 3 ** dims codes (729, 2187, 6561)")
    return dims


def fsq(h):
    """Finite scalar quantization at three levels (Mentzer et al. 2023), as CosyVoice 2's S3
    tokenizer: each value of h (..., dims) bounded by tanh (scaled by 0.999, so that it rounds to
    -1, 0 or 1) and rounded, the gradient passing straight through the rounding. Returns (the
    rounded values, codes (...): the digits + 1 read in base 3, the first least significant)."""
    bounded = jnp.tanh(h.astype(jnp.float32)) * jnp.float32(0.999)
    digits = jnp.round(bounded)
    codes = jnp.sum((digits.astype(jnp.int32) + 1) * 3 ** jnp.arange(h.shape[-1], dtype=jnp.int32), axis=-1)
    return bounded + jax.lax.stop_gradient(digits - bounded), codes


def encode(embed, x, n_q: int):
    """Codes (n_q, ...) of x (..., dim): each codebook quantizes what the ones before left over."""

    def layer(residual, codebook):
        codes = nearest_code(codebook, residual)
        return residual - codebook[codes], codes

    _, codes = jax.lax.scan(layer, x.astype(jnp.float32), embed[:n_q])
    return codes


def decode(embed, codes):
    """The sum over codebooks of the codes' vectors: codes (K, ...) -> (..., dim)."""
    return jnp.sum(jax.vmap(lambda e, c: e[c])(embed[: codes.shape[0]], codes), axis=0)


def draw(key, n: int, count: int, weights=None):
    """`count` sample indices of n: distinct while n allows (upstream's sample_vectors); with
    weights (n,), only samples of weight > 0, with replacement."""
    if weights is not None:
        return jax.random.choice(key, n, (count,), p=(weights > 0) / jnp.maximum(jnp.sum(weights > 0), 1))
    if n >= count:
        return jax.random.permutation(key, n)[:count]
    return jax.random.randint(key, (count,), 0, n)


def kmeans(key, samples, num_clusters: int, num_iters: int, weights=None):
    """Upstream's k-means: means drawn from the samples, Lloyd steps, empty clusters keep their
    mean; samples of weight 0 (padding) take no part."""
    means = samples[draw(key, samples.shape[0], num_clusters, weights)]

    def step(means, _):
        buckets = nearest_code(means, samples)
        onehot = jax.nn.one_hot(buckets, num_clusters, dtype=samples.dtype)
        if weights is not None:
            onehot = onehot * weights[:, None]
        counts = jnp.sum(onehot, 0)
        sums = jnp.einsum("nk,nd->kd", onehot, samples, precision=jax.lax.Precision.HIGHEST)
        new = sums / jnp.maximum(counts, 1)[:, None]
        return jnp.where(counts[:, None] == 0, means, new), counts

    means, counts = jax.lax.scan(step, means, None, length=num_iters)
    return means, counts[-1]


def quantize_train(
    state,
    x,
    n_active,
    key,
    decay: float = 0.99,
    epsilon: float = 1e-5,
    kmeans_iters: int = 50,
    threshold_ema_dead_code: float = 2.0,
    valid=None,
):
    """One training pass of the RVQ over x (B, T, dim), the first ``n_active`` codebooks in use;
    with ``valid`` (B, T), frames where it is 0 (padding) neither move the codebooks nor count
    in the commitment loss.

    Returns (quantized, codes (n_q, B, T), commitment loss, new state, each codebook's output
    (n_q, B, T, dim), zeros past n_active, without gradient: upstream's quantized_list). Per active codebook,
    as upstream: k-means initialisation on its first batch, nearest codes, then the EMA
    update of cluster sizes and code sums with Laplace smoothing. ``quantized`` passes the
    gradient straight through the whole stack to x (AudioCraft's fix of
    facebookresearch/encodec#25); the commitment loss is the mean over active codebooks of
    ||x_k - sg(q_k)||^2, where x_k is what codebook k quantizes. Codes whose EMA cluster
    size falls under ``threshold_ema_dead_code`` are replaced by random vectors of the
    batch, with their statistics reset so the replacement lasts (upstream writes only
    ``embed``, which its own EMA step overwrites in the same call).
    Codebooks past ``n_active`` (quantizer dropout) neither quantize nor change.
    """
    n_q, bins, dim = state["embed"].shape
    hi = jax.lax.Precision.HIGHEST
    weights = None if valid is None else valid.reshape(-1).astype(jnp.float32)

    def layer(residual, inputs):
        k, s, key = inputs
        active = k < n_active
        samples = jax.lax.stop_gradient(residual.reshape(-1, dim)).astype(jnp.float32)
        k_init, k_dead = jax.random.split(key)

        def run_kmeans(s):
            # embed_avg holds sums (embed = embed_avg / cluster_size); upstream stores the means
            # there, which shrinks every code about 60-fold at the first EMA update.
            means, counts = kmeans(k_init, samples, bins, kmeans_iters, weights)
            fitted = {
                "embed": means,
                "embed_avg": means * counts[:, None],
                "cluster_size": counts,
                "inited": jnp.ones((), bool),
            }
            return jax.tree.map(lambda new, old: new.astype(old.dtype), fitted, s)  # the state's dtypes, x64 too

        s = jax.lax.cond(active & ~s["inited"], run_kmeans, lambda s: s, s)
        codes = nearest_code(s["embed"], samples)
        q = s["embed"][codes].reshape(residual.shape)
        onehot = jax.nn.one_hot(codes, bins, dtype=jnp.float32)
        if weights is not None:
            onehot = onehot * weights[:, None]
        cluster_size = decay * s["cluster_size"] + (1 - decay) * jnp.sum(onehot, 0)
        embed_avg = decay * s["embed_avg"] + (1 - decay) * jnp.einsum("nk,nd->kd", onehot, samples, precision=hi)
        total = jnp.sum(cluster_size)
        smoothed = (cluster_size + epsilon) / (total + bins * epsilon) * total
        embed = embed_avg / smoothed[:, None]
        if threshold_ema_dead_code > 0:
            dead = cluster_size < threshold_ema_dead_code
            fresh = samples[draw(k_dead, samples.shape[0], bins, weights)]
            embed = jnp.where(dead[:, None], fresh, embed)
            embed_avg = jnp.where(dead[:, None], fresh * threshold_ema_dead_code, embed_avg)
            cluster_size = jnp.where(dead, threshold_ema_dead_code, cluster_size)
        new = {"embed": embed, "embed_avg": embed_avg, "cluster_size": cluster_size, "inited": s["inited"]}
        new = jax.tree.map(lambda a, b: jnp.where(active, a, b), new, s)
        error = jnp.square(residual.astype(jnp.float32) - jax.lax.stop_gradient(q))
        if weights is None:
            commit = jnp.mean(error)
        else:
            commit = jnp.sum(error.reshape(-1, dim) * weights[:, None]) / (jnp.maximum(jnp.sum(weights), 1) * dim)
        q = jnp.where(active, q, 0.0)
        return residual - jax.lax.stop_gradient(q).astype(residual.dtype), (
            q,
            codes.reshape(residual.shape[:-1]),
            commit * active,
            new,
        )

    keys = jax.random.split(key, n_q)
    _, (qs, codes, commits, new_state) = jax.lax.scan(layer, x, (jnp.arange(n_q), state, keys))
    quantized = jnp.sum(qs, axis=0).astype(x.dtype)
    quantized = x + jax.lax.stop_gradient(quantized - x)
    commit_loss = jnp.sum(commits) / jnp.maximum(n_active, 1)
    return quantized, codes, commit_loss, new_state, qs
