"""Random weights a reference script and its test both draw, so that a large reference model's
weights need not be kept: numpy's legacy generator, whose stream numpy keeps stable."""

import numpy as np


def seeded_state_dict(shapes, seed: int = 0):
    """{name: float32 array} for [(name, shape), ...] in order: each parameter drawn in turn
    from RandomState(seed), norm scales near one, biases small, weights at about unit gain."""
    rng = np.random.RandomState(seed)
    out = {}
    for name, shape in shapes:
        a = rng.standard_normal(shape).astype(np.float32)
        if len(shape) == 1:
            a = 1 + 0.2 * a if name.endswith("weight") else 0.2 * a
        else:
            a = a * np.float32(0.5 / np.sqrt(np.prod(shape[1:])))
        out[name] = a
    return out
