import numpy as np
import pytest
from PIL import Image

from trainers import data
from trainers.data.images import (
    DigitsSource,
    ImageFolderSource,
    ImageTransform,
    random_resized_crop,
    resize_center_crop,
)

TRANSFORM = ImageTransform(image_size=16, train=True, random_resized_crop=True, crop_scale=(0.5, 1.0), hflip=0.5)


@pytest.fixture(scope="module")
def digits():
    return DigitsSource("train", 16)


def take(it, n):
    return [next(it) for _ in range(n)]


def test_digits_split_is_fixed_and_disjoint():
    train, val = DigitsSource("train", 8), DigitsSource("val", 8)
    assert len(train) + len(val) == 1797 and len(val) == 359
    assert train.images.shape[1:] == (8, 8, 3) and train.images.dtype == np.uint8
    with pytest.raises(ValueError, match="splits 'train' and 'val'"):
        DigitsSource("test", 8)


def test_deterministic_and_process_sharded(digits):
    whole = take(data.train_iterator(digits, TRANSFORM, 16, (0, 16), seed=3), 3)
    again = take(data.train_iterator(digits, TRANSFORM, 16, (0, 16), seed=3), 3)
    first = take(data.train_iterator(digits, TRANSFORM, 16, (0, 8), seed=3), 3)
    second = take(data.train_iterator(digits, TRANSFORM, 16, (8, 16), seed=3), 3)
    for w, a, p0, p1 in zip(whole, again, first, second):
        for key in ("image", "label"):
            np.testing.assert_array_equal(w[key], a[key])
            np.testing.assert_array_equal(w[key], np.concatenate([p0[key], p1[key]]))
    other_seed = next(data.train_iterator(digits, TRANSFORM, 16, (0, 16), seed=4))
    assert not np.array_equal(whole[0]["label"], other_seed["label"])


def test_epochs_reshuffle_and_cover_everything(digits):
    n = len(digits)
    it = data.train_iterator(digits, TRANSFORM, 1, (0, 1), seed=0)
    labels = np.array([next(it)["label"][0] for _ in range(2 * n)])
    np.testing.assert_array_equal(np.bincount(labels[:n]), np.bincount(digits.labels))
    assert not np.array_equal(labels[:n], labels[n:])


def test_iterator_state_resumes(digits):
    it = data.train_iterator(digits, TRANSFORM, 16, (0, 16), seed=0)
    take(it, 2)
    state = it.get_state()
    expected = take(it, 2)
    resumed = data.train_iterator(digits, TRANSFORM, 16, (0, 16), seed=0)
    resumed.set_state(state)
    for a, b in zip(expected, take(resumed, 2)):
        np.testing.assert_array_equal(a["image"], b["image"])


def test_workers_give_the_same_batches(digits):
    plain = take(data.train_iterator(digits, TRANSFORM, 16, (0, 16), seed=0), 3)
    workers = data.train_iterator(digits, TRANSFORM, 16, (0, 16), seed=0, num_workers=2)
    for a, b in zip(plain, take(workers, 3)):
        np.testing.assert_array_equal(a["image"], b["image"])


def test_eval_batches_pad_and_mask():
    source = DigitsSource("val", 8)
    batches = list(data.eval_batches(source, ImageTransform(8, train=False), 64, (0, 64)))
    assert len(batches) == 6  # 359 images -> 6 batches of 64
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 359 and not mask[359:].any()
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:359], source.labels)


class Lengths:
    """Records of lengths 0.1-1.0 s at 100 samples/s; a record's samples hold its index + 1."""

    def __init__(self, n=90):
        self.lengths = np.round(np.random.default_rng(0).uniform(0.1, 1.0, n), 2)

    def __len__(self):
        return len(self.lengths)

    def __getitem__(self, i):
        return {"index": i, "length": self.lengths[i]}


def pad_to_longest(record, rng):
    x = np.zeros(100, np.float32)
    x[: int(round(record["length"] * 100))] = record["index"] + 1
    return {"x": x, "index": np.int32(record["index"]), "noise": np.float32(rng.random()), "mask": np.float32(1)}


def by_length(source):
    return data.LengthBuckets(source.lengths, [0.25, 0.5, 1.0], budget=4.0, crop={"x": [25, 50, 100]})


def test_batches_by_length_fit_their_bucket_and_budget():
    source = Lengths()
    buckets = by_length(source)
    assert buckets.batch_sizes(2) == [16, 8, 4]  # 4 s of 0.25, 0.5 and 1 s rows, in pairs
    per_epoch = sum(np.sum(buckets.bucket_of() == b) // n for b, n in enumerate([16, 8, 4]))
    it = data.bucketed_train_iterator(source, pad_to_longest, buckets, 2, lambda n: (0, n), seed=0)
    seen = []
    for batch in take(it, per_epoch):
        bucket = [25, 50, 100].index(batch["x"].shape[1])
        lengths = source.lengths[batch["index"]]
        assert len(batch["x"]) * buckets.bounds[bucket] <= buckets.budget and len(batch["x"]) % 2 == 0
        assert (lengths <= buckets.bounds[bucket]).all() and (lengths > ([0] + buckets.bounds)[bucket]).all()
        np.testing.assert_array_equal((batch["x"] > 0).sum(1), np.round(lengths * 100))  # nothing cut
        seen += list(batch["index"])
    assert len(seen) == len(set(seen))  # an epoch reads a record at most once
    left_out = np.bincount(buckets.bucket_of()[np.setdiff1d(np.arange(len(source)), seen)], minlength=3)
    assert (left_out < [16, 8, 4]).all()  # only each bucket's last partial batch
    second_epoch = [int(i) for batch in take(it, per_epoch) for i in batch["index"]]
    assert second_epoch != seen


def test_batches_by_length_split_over_processes_workers_and_resume():
    source = Lengths()
    buckets = by_length(source)

    def batches(rows_of, n=6, **kw):
        return take(data.bucketed_train_iterator(source, pad_to_longest, buckets, 2, rows_of, seed=1, **kw), n)

    whole = batches(lambda n: (0, n))
    halves = zip(batches(lambda n: (0, n // 2)), batches(lambda n: (n // 2, n)))
    for w, (first, second) in zip(whole, halves):
        for key in w:
            np.testing.assert_array_equal(w[key], np.concatenate([first[key], second[key]]))
    for a, b in zip(whole, batches(lambda n: (0, n), num_workers=2)):
        np.testing.assert_array_equal(a["noise"], b["noise"])
    it = data.bucketed_train_iterator(source, pad_to_longest, buckets, 2, lambda n: (0, n), seed=1)
    take(it, 4)
    resumed = data.bucketed_train_iterator(source, pad_to_longest, buckets, 2, lambda n: (0, n), seed=1)
    resumed.set_state(it.get_state())
    for a, b in zip(whole[4:], take(resumed, 2)):
        np.testing.assert_array_equal(a["noise"], b["noise"])


def test_batches_by_length_refuse_a_budget_that_fits_no_batch():
    source = Lengths()
    with pytest.raises(
        ValueError, match=r"batch_seconds=4 holds 4 utterances of the longest bucket \(1 s\), fewer than 8"
    ):
        by_length(source).batch_sizes(8)
    few = data.LengthBuckets(source.lengths[:3], [0.25, 0.5, 1.0], 4.0, {"x": [25, 50, 100]})
    with pytest.raises(ValueError, match="makes no whole batch of any bucket"):
        data.bucketed_train_iterator(source, pad_to_longest, few, 2, lambda n: (0, n), seed=0)


def make_folder(root, bad=False):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    if bad:
        (root / "dog" / "broken.jpg").write_bytes(b"not a jpeg")


def test_image_folder(tmp_path):
    make_folder(tmp_path)
    source = ImageFolderSource(str(tmp_path))
    assert source.classes == ["cat", "dog"] and len(source) == 6
    it = data.train_iterator(source, TRANSFORM, 4, (0, 4), seed=0)
    batch = next(it)
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.uint8
    with pytest.raises(FileNotFoundError, match="nope"):
        ImageFolderSource(str(tmp_path / "nope"))


def test_unreadable_image_is_named_or_skipped(tmp_path):
    make_folder(tmp_path, bad=True)
    source = ImageFolderSource(str(tmp_path))
    evaluate = ImageTransform(16, train=False)
    with pytest.raises(ValueError, match="cannot read image .*broken.jpg"):
        list(data.eval_batches(source, evaluate, 8, (0, 8)))
    skip = ImageTransform(16, train=False, on_bad_image="skip")
    with pytest.warns(UserWarning, match="skipping unreadable image .*broken.jpg"):
        (batch,) = list(data.eval_batches(source, skip, 8, (0, 8)))
    assert batch["mask"].sum() == 6  # 7 files: the broken one is masked out, as is the padding row


def test_crops():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    assert random_resized_crop(img, 24, (0.08, 1.0), (3 / 4, 4 / 3), rng).shape == (24, 24, 3)
    assert resize_center_crop(img, 24, 0.875).shape == (24, 24, 3)
