import numpy as np
import pytest
from PIL import Image

from trainers import data
from trainers.images import DigitsSource, ImageFolderSource, ImageTransform, random_resized_crop, resize_center_crop

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
