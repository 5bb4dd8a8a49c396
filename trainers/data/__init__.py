"""Deterministic, process-sharded input pipelines on grain; the sources they read are the
modules beside this one (images, speech, semantic, extracted).

The global order of examples depends only on the seed: a grain MapDataset shuffled
per epoch and augmented per element index. Each process reads only the rows of each
global batch that its devices hold (never the whole batch), and the trainer assembles
the global array with jax.make_array_from_process_local_data. So a run gives the same
batches on one process or many, and resuming restores the iterator's position from
the checkpoint.

Batches by length (LengthBuckets): each record goes to the shortest bucket that holds it,
and a global batch is as many records of one bucket as fit in a budget of padded length,
so short utterances are not padded to the longest; one compiled step per bucket.
"""

import math
import sys
from dataclasses import dataclass

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


@dataclass
class LengthBuckets:
    """How to batch the training records by length (seconds for audio)."""

    lengths: np.ndarray  # of each training record
    bounds: list  # the padded length of each bucket, ascending; the last holds every record
    budget: float  # the padded length of a global batch: rows = budget // bound, rounded down to the multiple
    crop: dict  # name -> its size along axis 1 in each bucket (the transform pads it to the longest)

    def batch_sizes(self, multiple: int) -> list:
        """Global rows of each bucket's batches: a multiple of `multiple` (devices x micro-batches)."""
        sizes = [int(self.budget // bound) // multiple * multiple for bound in self.bounds]
        if sizes[-1] < multiple:
            raise ValueError(
                f"data.batch_seconds={self.budget:g} holds {int(self.budget // self.bounds[-1])} utterances of the "
                f"longest bucket ({self.bounds[-1]:g} s), fewer than {multiple} (devices x optimizer.grad_accum_steps)"
            )
        return sizes

    def bucket_of(self) -> np.ndarray:
        """The bucket of each record: the shortest that holds it."""
        return np.minimum(np.searchsorted(self.bounds, self.lengths), len(self.bounds) - 1)


class _BucketPlan:
    """Global batches (bucket, record indices), endless: each epoch shuffles every bucket's
    records, cuts them into batches (a bucket's last partial batch waits for the next
    epoch's shuffle) and shuffles the batches. It depends only on the seed, so every
    process holds the same plan and reads its own rows of it."""

    def __init__(self, buckets: LengthBuckets, sizes: list, seed: int):
        self.members = [np.flatnonzero(buckets.bucket_of() == b) for b in range(len(sizes))]
        self.sizes, self.seed = sizes, seed
        self._epoch = (-1, [])  # the last epoch's batches, as reads go in order
        self.per_epoch = sum(len(m) // n for m, n in zip(self.members, sizes))
        if self.per_epoch == 0:
            raise ValueError(
                f"data.batch_seconds={buckets.budget:g} makes no whole batch of any bucket: buckets of "
                f"{[len(m) for m in self.members]} records need {sizes} each"
            )

    def __len__(self):
        return sys.maxsize

    def epoch(self, number: int) -> list:
        if self._epoch[0] == number:
            return self._epoch[1]
        rng = np.random.default_rng([self.seed, number])
        batches = []
        for b, (members, size) in enumerate(zip(self.members, self.sizes)):
            order = rng.permutation(members)
            batches += [(b, order[i : i + size]) for i in range(0, len(order) - size + 1, size)]
        self._epoch = (number, [batches[i] for i in rng.permutation(len(batches))])
        return self._epoch[1]

    def __getitem__(self, k):
        bucket, indices = self.epoch(k // self.per_epoch)[k % self.per_epoch]
        return k, bucket, indices


class _LoadRows:
    """A planned global batch -> this process's rows of it, transformed, stacked and cut to the bucket."""

    def __init__(self, source, transform, crop: dict, rows: dict, seed: int):
        self.source, self.transform, self.crop, self.rows, self.seed = source, transform, crop, rows, seed

    def __call__(self, planned):
        k, bucket, indices = planned
        start, stop = self.rows[len(indices)]
        rows = [
            self.transform(self.source[int(indices[r])], np.random.default_rng([self.seed + 1, k, r]))
            for r in range(start, stop)
        ]
        batch = {name: np.stack([row[name] for row in rows]) for name in rows[0]}
        for name, lengths in self.crop.items():
            batch[name] = batch[name][:, : lengths[bucket]]
        return batch


def bucketed_train_iterator(
    source, transform, buckets: LengthBuckets, multiple: int, rows_of, seed: int, num_workers: int = 0
):
    """train_iterator's counterpart for batches by length: an endless, checkpointable
    iterator of this process's rows (rows_of(global rows) -> (start, stop)) of each global
    batch, the names in buckets.crop cut to the batch's bucket. The transform of the record
    in row r of batch k draws from a generator seeded by (seed, k, r), whatever the processes."""
    _require_grain()
    sizes = buckets.batch_sizes(multiple)
    rows = {n: rows_of(n) for n in sizes}  # for the workers: a mesh does not travel
    plan = _BucketPlan(buckets, sizes, seed)
    ds = grain.MapDataset.source(plan).map(_LoadRows(source, transform, buckets.crop, rows, seed))
    return iter(_prefetch(ds.to_iter_dataset(), num_workers))
