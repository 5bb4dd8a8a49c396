"""Top-k classification accuracy, as timm's validate.py reports it (top-1 and top-5)."""

import jax
import numpy as np


def top_k(logits, k: int = 5):
    """The k best classes of each row, best first (in the jitted eval step: only these leave the device)."""
    return jax.lax.top_k(logits, min(k, logits.shape[-1]))[1]


def accuracies(top: np.ndarray, labels: np.ndarray) -> dict:
    """{"accuracy": top-1, "top5_accuracy": top-5} of the rows' best classes ``top`` (N, k)."""
    hits = top == np.asarray(labels)[:, None]
    return {"accuracy": float(np.mean(hits[:, 0])), "top5_accuracy": float(np.mean(hits[:, :5].any(-1)))}
