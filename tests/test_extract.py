"""trainers.extract: an image folder's latents (vae) and a speech corpus's units (units), sharded
over devices and processes, resumable."""

import json

import jax
import numpy as np
import pytest
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


@pytest.mark.slow
def corpus_and_checkpoint(corpus, root, reference, case):
    """The tone corpus's config (root/corpus.yaml), returned, and a reference case's encoder saved
    as transformers saves it (root/model.safetensors and config.json)."""
    from conftest import ROOT
    from safetensors.numpy import save_file
    from test_hubert import hubert_config

    from trainers import config as config_lib

    with np.load(ROOT / "tests" / "data" / f"{reference}.npz") as f:
        state_dict = {k.split("/sd/")[1]: f[k] for k in f.files if k.startswith(f"{case}/sd/")}
        (root / "config.json").write_text(str(f[f"{case}/config"]))
    save_file(state_dict, str(root / "model.safetensors"))
    (root / "corpus.yaml").write_text(config_lib.dump(hubert_config(corpus, root)))
    return root / "corpus.yaml"


def test_units_of_a_speech_corpus_over_devices_resume(tone_corpus, tmp_path):
    """Units of a HuBERT layer, batched over 8 devices, are each utterance's units alone (the
    tokenizer's, unbatched); --features writes the states; a rerun redoes only what is missing."""
    import pytest

    from trainers.data import speech
    from trainers.data.semantic import SemanticTokenizer
    from trainers.extract import main as extract

    config = corpus_and_checkpoint(tone_corpus, tmp_path, "ssl_reference", "hubert_base_layout")
    out = tmp_path / "units"
    args = ["units", str(config), "--encoder", str(tmp_path / "model.safetensors"), "--layer", "1"]
    args += ["--workdir", str(out), "--splits", "train,test", "--batch_size", "8", "--shard_batches", "2"]
    extract([*args, "--clusters", "4", "--fit_utterances", "10"])
    index = json.loads((out / "train" / "index.json").read_text())
    assert [s["rows"] for s in index["shards"]] == [16, 8] and index["what"] == "units" and index["layer"] == 1

    def read(split, what):
        shards = json.loads((out / split / "index.json").read_text())["shards"]
        values = np.concatenate([np.load(out / split / f"{s['prefix']}_{what}.npy") for s in shards])
        lengths = np.concatenate([np.load(out / split / f"{s['prefix']}_lengths.npy") for s in shards])
        return np.split(values, np.cumsum(lengths)[:-1])

    records = [json.loads(line) for line in open(tone_corpus / "train.jsonl")]
    tokenizer = SemanticTokenizer.load(str(out / "tokenizer.npz"))
    expected = tokenizer([speech.read_audio(str(tone_corpus / r["source"])) for r in records])
    assert [list(u) for u in read("train", "units")] == expected
    assert len(read("test", "units")) == 6

    # Killed while writing the second shard of train: the first is kept (marked here), the second redone.
    (out / "train" / "index.json").unlink()
    (out / "train" / "p0_s00001_indices.npy").unlink()
    first = np.load(out / "train" / "p0_s00000_units.npy")
    np.save(out / "train" / "p0_s00000_units.npy", np.full_like(first, 3))
    extract([*args, "--clusters", "4", "--fit_utterances", "10"])  # the tokenizer is reused, not fitted again
    resumed = read("train", "units")
    assert all((u == 3).all() for u in resumed[:16]) and [list(u) for u in resumed[16:]] == expected[16:]

    extract([*args[:-4], "--workdir", str(tmp_path / "features"), "--splits", "train", "--features"])
    out = tmp_path / "features"
    states, valid = tokenizer.frames([speech.read_audio(str(tone_corpus / r["source"])) for r in records])
    for row, features in enumerate(read("train", "features")):
        assert features.dtype == np.float16
        np.testing.assert_allclose(features, np.asarray(states[row][: len(features)]), rtol=1e-2, atol=1e-2)
        assert len(features) == int(valid[row].sum())
    with pytest.raises(SystemExit, match="--layer 3: the encoder has hidden states 0..2"):
        extract([*args[:5], "3", "--workdir", str(tmp_path / "x"), "--clusters", "4"])


def test_units_of_w2v_bert_from_audio_over_devices(tone_corpus, tmp_path):
    """A w2v-BERT 2.0 checkpoint (transformers' files) gives units from audio through
    SeamlessM4T's features (tests/test_w2v_bert.py checks them against transformers), batched
    over 8 devices as each utterance alone."""

    from trainers.data import speech
    from trainers.data.semantic import SemanticTokenizer
    from trainers.extract import main as extract

    config = corpus_and_checkpoint(tone_corpus, tmp_path, "w2v_bert_reference", "relative_key")
    out = tmp_path / "units"
    args = ["units", str(config), "--encoder", str(tmp_path / "model.safetensors"), "--layer", "2"]
    extract([*args, "--workdir", str(out), "--splits", "train", "--batch_size", "8", "--clusters", "4"])
    index = json.loads((out / "train" / "index.json").read_text())
    assert index["frame_rate"] == 50
    units = np.concatenate([np.load(out / "train" / f"{s['prefix']}_units.npy") for s in index["shards"]])
    lengths = np.concatenate([np.load(out / "train" / f"{s['prefix']}_lengths.npy") for s in index["shards"]])
    records = [json.loads(line) for line in open(tone_corpus / "train.jsonl")]
    tokenizer = SemanticTokenizer.load(str(out / "tokenizer.npz"))
    expected = tokenizer([speech.read_audio(str(tone_corpus / r["source"])) for r in records])
    assert [list(u) for u in np.split(units, np.cumsum(lengths)[:-1])] == expected
    assert len(set(units.tolist())) > 1
