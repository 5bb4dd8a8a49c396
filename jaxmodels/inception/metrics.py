"""The numbers of ADM's evaluator (openai/guided-diffusion evaluations/evaluator.py) from
Inception features: Gaussian statistics for FID and sFID, the Inception Score, and
improved precision and recall (Kynkaanniemi et al. 2019, k = 3). Distances run on device
in blocks of rows, so 50K x 50K comparisons never hold the whole matrix."""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def statistics(features) -> tuple:
    """(mean, covariance) in float64, as ADM's compute_statistics (np.cov over rows)."""
    features = np.asarray(features, np.float64)
    return features.mean(0), np.cov(features, rowvar=False)


def inception_score(logits, split_size: int = 5000) -> float:
    """ADM's: exp of the mean KL divergence between p(y|x) and the split's p(y), over
    consecutive splits of split_size (10 splits of 50K), averaged. Logits without bias."""
    logits = np.asarray(logits, np.float64)
    log_p = logits - logits.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    scores = []
    for i in range(0, len(log_p), split_size):
        part = log_p[i : i + split_size]
        p = np.exp(part)
        log_marginal = np.log(p.mean(0, keepdims=True))
        scores.append(np.exp(np.mean(np.sum(p * (part - log_marginal), 1))))
    return float(np.mean(scores))


def _squared_distances(a, b):
    return jnp.maximum((a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None], 0.0)


@functools.partial(jax.jit, static_argnames="k")
def _kth_neighbour(rows, points, k):
    return -jax.lax.top_k(-_squared_distances(rows, points), k + 1)[0][:, k]  # the nearest is the row itself


@jax.jit
def _inside_any(rows, centres, radii):
    return (_squared_distances(rows, centres) <= radii[None]).any(1)


def _blocks(fn, rows, *args, block: int):
    """fn over blocks of rows, the last padded to the others' size (one compiled shape)."""
    rows = np.asarray(rows, np.float32)
    size = min(block, len(rows))
    out = []
    for start in range(0, len(rows), size):
        part = rows[start : start + size]
        out.append(np.asarray(fn(np.pad(part, ((0, size - len(part)), (0, 0))), *args))[: len(part)])
    return np.concatenate(out)


def manifold_radii(features, k: int = 3, block: int = 10000):
    """Each feature vector's squared distance to its k-th nearest neighbour among them."""
    features = jnp.asarray(features, jnp.float32)
    return _blocks(lambda rows: _kth_neighbour(rows, features, k), features, block=block)


def precision_recall(reference, samples, k: int = 3, block: int = 10000) -> tuple:
    """(precision: the share of samples inside some reference vector's k-NN ball, recall:
    the share of reference vectors inside some sample's ball), as ADM's compute_prec_recall."""
    reference, samples = np.asarray(reference, np.float32), np.asarray(samples, np.float32)
    radii_ref, radii_samples = manifold_radii(reference, k, block), manifold_radii(samples, k, block)
    precision = _blocks(_inside_any, samples, jnp.asarray(reference), jnp.asarray(radii_ref), block=block).mean()
    recall = _blocks(_inside_any, reference, jnp.asarray(samples), jnp.asarray(radii_samples), block=block).mean()
    return float(precision), float(recall)
