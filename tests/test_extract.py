"""trainers.extract vae: an image folder's latents, sharded over devices and processes, resumable."""

import json

import jax
import numpy as np
from PIL import Image

from trainers.tasks.diffusion import LatentSource


def image_folder(root, n=11):
    """root/train/<cat|dog>/<i>.png: n random images of assorted sizes."""
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = rng.integers(16, 80, 2)
        folder = root / "train" / ("cat" if i % 2 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def by_index(folder):
    source = LatentSource(str(folder.parent), folder.name)
    rows = [source[i] for i in range(len(source))]
    indices = np.concatenate([np.load(folder / f"{s['prefix']}_indices.npy") for s in _index(folder)["shards"]])
    flipped = np.zeros(len(rows), bool)
    for k in range(len(rows)):  # the second of two rows of one image is its mirror
        flipped[k] = (indices[:k] == indices[k]).any()
    order = np.lexsort((flipped, indices))
    return np.stack([rows[k]["x"] for k in order]), np.array([rows[k]["label"] for k in order]), indices[order]


def _index(folder):
    return json.loads((folder / "index.json").read_text())


def test_latents_of_an_image_folder_over_devices_resume(fixtures_dir, tmp_path):
    from test_weights import dit_latent_config

    from jaxmodels import vae
    from trainers.extract import center_crop_arr
    from trainers.extract import main as extract

    config, _, vae_weights = dit_latent_config(fixtures_dir, tmp_path)
    images = image_folder(tmp_path / "images")
    args = ["vae", str(config), "--images", str(images), "--workdir", str(tmp_path / "latents"), "--flip"]
    args += ["--vae", str(vae_weights), "--batch_size", "8", "--shard_batches", "1", "--workers", "2"]
    extract(args)
    folder = tmp_path / "latents" / "train"
    latents, labels, indices = by_index(folder)
    assert latents.shape == (22, 8, 8, 4) and _index(folder)["num_classes"] == 2
    assert [s["rows"] for s in _index(folder)["shards"]] == [16, 6]  # 8 images a batch, and their mirrors
    np.testing.assert_array_equal(indices, np.repeat(np.arange(11), 2))

    model, variables = vae.load_pretrained(str(vae_weights))
    paths = sorted((images / "train").glob("*/*.png"), key=lambda p: (p.parent.name, p.name))  # the folder's order
    pixels = np.stack([center_crop_arr(str(p), 16) for p in paths]).astype(np.float32) / 127.5 - 1
    both = np.concatenate([pixels, pixels[:, :, ::-1]])
    mean, _ = jax.jit(lambda v, x: model.apply(v, x, method="encode"))(variables, both)
    expected = np.stack([mean[:11], mean[11:]], 1).reshape(22, 8, 8, 4) * 0.18215
    np.testing.assert_allclose(latents, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels, np.repeat([1 if p.parent.name == "dog" else 0 for p in paths], 2))

    # Killed while writing its second shard: the rerun keeps the first (marked here) and redoes the second.
    (folder / "index.json").unlink()
    (folder / "p0_s00001_indices.npy").unlink()
    np.save(folder / "p0_s00000_latents.npy", np.zeros((16, 8, 8, 4), np.float32))
    extract(args)
    resumed = by_index(folder)[0]
    assert not resumed[:16].any()
    np.testing.assert_array_equal(resumed[16:], latents[16:])
    # The diffusion task's pipeline reads them: a process's rows of each global batch.
    from trainers import data
    from trainers.tasks.diffusion import _latent_identity

    batch = next(data.train_iterator(LatentSource(str(tmp_path / "latents"), "train"), _latent_identity, 8, (4, 8), 0))
    assert batch["x"].shape == (4, 8, 8, 4) and batch["label"].dtype == np.int32
