"""Deterministic, process-sharded input pipelines on grain.

The global order of examples depends only on the seed: a grain MapDataset shuffled
per epoch and augmented per element index. Each process reads only the rows of each
global batch that its devices hold (never the whole batch), and the trainer assembles
the global array with jax.make_array_from_process_local_data. So a run gives the same
batches on one process or many, and resuming restores the iterator's position from
the checkpoint.
"""

import math

import numpy as np

try:
    import grain
except ImportError:  # the input pipeline needs grain; the models and benchmarks do not
    grain = None


def _require_grain():
    if grain is None:
        raise ImportError("the input pipeline needs grain (pip install grain)")


def _prefetch(ds, num_workers: int):
    """Worker processes for decoding and augmentation (0: read in this process)."""
    if num_workers <= 0:
        return ds
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; we are not an absl app
        flags.FLAGS.mark_as_parsed()
    return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))


def _process_slice(ds, rows, global_batch):
    start, stop = rows
    local = stop - start
    return ds.batch(local, drop_remainder=True)[start // local :: global_batch // local]


def train_iterator(source, transform, global_batch: int, rows, seed: int, num_workers: int = 0):
    """An endless, checkpointable iterator of this process's rows of each global batch.

    ``transform(record, np.random.Generator) -> record`` runs per element, seeded by the
    element's index in the epoch-repeated stream, so augmentations are reproducible.
    """
    _require_grain()
    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None).random_map(transform, seed=seed + 1)
    return iter(_prefetch(_process_slice(ds, rows, global_batch).to_iter_dataset(), num_workers))


class _Padded:
    """A finite split padded up to whole global batches; padding rows carry mask 0."""

    def __init__(self, source, transform, total):
        self.source, self.transform, self.total = source, transform, total

    def __len__(self):
        return self.total

    def __getitem__(self, i):
        real = i < len(self.source)
        record = self.transform(self.source[i if real else 0], np.random.default_rng(0))
        return {**record, "mask": np.float32(record["mask"] if real else 0.0)}


def eval_batches(source, transform, global_batch: int, rows, num_workers: int = 0):
    """One pass over a finite split: this process's rows of each global batch, padded and masked."""
    _require_grain()
    total = math.ceil(len(source) / global_batch) * global_batch
    ds = _process_slice(grain.MapDataset.source(_Padded(source, transform, total)), rows, global_batch)
    return _prefetch(ds.to_iter_dataset(), num_workers)
