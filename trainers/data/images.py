"""Image sources and augmentations for the input pipeline (host side, numpy + PIL).

Images travel as uint8 NHWC; normalisation happens on the device (cheaper transfers).
"""

import os
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from trainers.cli import InputError
from trainers.config import ConfigError, DataConfig

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff", ".gif")


@dataclass
class ImageDataConfig(DataConfig):
    """The data section of the image families."""

    # imagefolder: a root with one folder per split, each of class subfolders; latents: a folder
    # of <split>.npz (task diffusion); digits: scikit-learn's 8x8 digits, built in
    source: Literal["digits", "imagefolder", "latents"] = "digits"
    image_size: int = 32
    holdout_fraction: float = 0.2  # digits: held-out share for evaluation
    on_bad_image: Literal["error", "skip"] = "error"
    hflip: float = 0.5


class DigitsSource:
    """scikit-learn's bundled handwritten digits (8x8, 1797 images, 10 classes), upscaled to RGB.

    The split is fixed (a seeded permutation independent of the training seed):
    ``holdout_fraction`` of the images form "val", the rest "train".
    """

    num_classes = 10

    def __init__(self, split: str, image_size: int, holdout_fraction: float = 0.2):
        from sklearn.datasets import load_digits

        digits = load_digits()
        order = np.random.RandomState(1234).permutation(len(digits.images))
        n_val = int(round(holdout_fraction * len(order)))
        if split not in ("train", "val"):
            raise ConfigError(f"digits has splits 'train' and 'val', not {split!r}")
        idx = order[:n_val] if split == "val" else order[n_val:]
        small = (digits.images[idx] * (255.0 / 16.0)).round().astype(np.uint8)
        self.images = np.stack(
            [np.asarray(Image.fromarray(im).resize((image_size, image_size), Image.BILINEAR)) for im in small]
        )[..., None].repeat(3, axis=-1)
        self.labels = digits.target[idx].astype(np.int32)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i], "mask": np.float32(1.0)}


class ImageFolderSource:
    """ImageNet layout: ``root/<class name>/<image>``, classes sorted by name.

    Records are (path, label); decoding happens in the transform, i.e. in the workers.
    """

    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder not found: {root}")
        self.classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        if not self.classes:
            raise InputError(f"image folder {root} has no class subfolders")
        self.samples = []
        for label, name in enumerate(self.classes):
            for dirpath, _, files in sorted(os.walk(os.path.join(root, name))):
                for f in sorted(files):
                    if f.lower().endswith(IMAGE_EXTENSIONS):
                        self.samples.append((os.path.join(dirpath, f), label))
        if not self.samples:
            raise InputError(f"image folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.num_classes = len(self.classes)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return {"path": path, "label": np.int32(label)}


def decode(path: str, on_bad_image: str):
    """RGB uint8 image, or None where the file is unreadable and on_bad_image == 'skip'."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises many types for a broken file
        if on_bad_image == "skip":
            warnings.warn(f"skipping unreadable image {path}: {e}", stacklevel=2)
            return None
        raise InputError(f"cannot read image {path}: {e}") from e


def random_resized_crop(img, size, scale, ratio, rng: np.random.Generator):
    """torchvision's RandomResizedCrop: area share from ``scale``, log-uniform aspect from ``ratio``."""
    h, w = img.shape[:2]
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        cw, ch = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            break
    else:  # fall back to a centre crop at the nearest allowed aspect ratio
        in_ratio = w / h
        if in_ratio < ratio[0]:
            cw, ch = w, int(round(w / ratio[0]))
        elif in_ratio > ratio[1]:
            ch, cw = h, int(round(h * ratio[1]))
        else:
            cw, ch = w, h
        top, left = (h - ch) // 2, (w - cw) // 2
    crop = Image.fromarray(img[top : top + ch, left : left + cw])
    return np.asarray(crop.resize((size, size), Image.BILINEAR))


def resize_center_crop(img, size: int, crop_pct: float):
    """Eval transform as timm's (torchvision's Resize then CenterCrop): the shorter side to
    floor(size / crop_pct), the longer truncated in proportion (bicubic), then a centre crop
    of size offset by round((side - size) / 2)."""
    h, w = img.shape[:2]
    short = int(size / crop_pct)
    nh, nw = (short, max(1, int(w * short / h))) if h <= w else (max(1, int(h * short / w)), short)
    img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BICUBIC))
    top, left = round((nh - size) / 2), round((nw - size) / 2)
    return img[top : top + size, left : left + size]


@dataclass
class ImageTransform:
    """Decode + augment (train) or decode + resize/centre-crop (eval) one record."""

    image_size: int
    train: bool
    random_resized_crop: bool = True
    crop_scale: tuple = (0.08, 1.0)
    crop_ratio: tuple = (3 / 4, 4 / 3)
    hflip: float = 0.5
    crop_pct: float = 1.0
    on_bad_image: str = "error"

    def __call__(self, record, rng: np.random.Generator):
        if "path" in record:
            img = decode(record["path"], self.on_bad_image)
            if img is None:
                blank = np.zeros((self.image_size, self.image_size, 3), np.uint8)
                return {"image": blank, "label": record["label"], "mask": np.float32(0.0)}
        else:
            img = record["image"]
        if self.train:
            if self.random_resized_crop:
                img = random_resized_crop(img, self.image_size, self.crop_scale, self.crop_ratio, rng)
            elif img.shape[:2] != (self.image_size, self.image_size):
                img = resize_center_crop(img, self.image_size, 1.0)
            if self.hflip and rng.random() < self.hflip:
                img = img[:, ::-1]
        elif img.shape[:2] != (self.image_size, self.image_size):
            img = resize_center_crop(img, self.image_size, self.crop_pct)
        return {
            "image": np.ascontiguousarray(img),
            "label": record["label"],
            "mask": np.float32(record.get("mask", 1.0)),
        }
