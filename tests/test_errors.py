"""Mistakes a person makes get one line naming the file, key or value, and a non-zero exit."""

import re

import numpy as np
import pytest
import yaml
from conftest import TINY_CODEC, tiny_config

from trainers import compress, evaluate, train
from trainers import config as config_lib


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(config_lib.dump(tiny_config()))
    return path


def one_line_exit(main, argv, match):
    with pytest.raises(SystemExit) as e:
        main(argv)
    message = str(e.value.code)
    assert "\n" not in message and "Traceback" not in message, message
    assert re.search(match, message), message


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["optimizer.lr=[1,"], r"override 'optimizer.lr=\[1,': the value is not valid YAML"),
        (["data.batch_size=0"], "data.batch_size must be at least 1, not 0"),
        (["task=segmentation"], "unknown task 'segmentation'"),
        (["model.name=mambaout_huge"], "mambaout_huge"),
        (["model.args.bogus=1"], "bogus"),
        (["mesh.data=3"], "does not fit 8 devices"),
    ],
)
def test_config_mistakes(config_file, tmp_path, overrides, match):
    one_line_exit(train.main, [str(config_file), "--workdir", str(tmp_path / "w"), *overrides], match)


def test_malformed_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: classification\noptimizer: {lr: 1e-3\n")
    one_line_exit(train.main, [str(bad), "--workdir", str(tmp_path / "w")], r"bad.yaml is not valid YAML: .* line 3")


def test_unwritable_workdir(config_file, tmp_path):
    (tmp_path / "file").write_text("")
    one_line_exit(train.main, [str(config_file), "--workdir", str(tmp_path / "file" / "run")], "file/run")


def test_unreadable_image_in_error_mode(tmp_path):
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "images" / split / c).mkdir(parents=True)
            from PIL import Image

            Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "images" / split / c / "ok.png")
    (tmp_path / "images" / "train" / "a" / "broken.png").write_bytes(b"not a png")
    cfg = tiny_config(
        data={"source": "imagefolder", "path": str(tmp_path / "images"), "batch_size": 8, "eval_batch_size": 8}
    )
    path = tmp_path / "c.yaml"
    path.write_text(config_lib.dump(cfg))
    one_line_exit(train.main, [str(path), "--workdir", str(tmp_path / "w")], r"cannot read image .*broken.png")


@pytest.mark.slow
def test_evaluate_a_missing_step_and_mismatched_weights(config_file, tmp_path):
    workdir = tmp_path / "run"
    train.main([str(config_file), "--workdir", str(workdir)])
    one_line_exit(
        evaluate.main,
        [str(config_file), "--workdir", str(workdir), "--checkpoint", "99"],
        r"no checkpoint for step 99 .* there are \[2, 4\]",
    )
    one_line_exit(
        evaluate.main,
        [str(config_file), "--workdir", str(workdir), "model.args.dims=[8,16,16,64]"],
        r"does not fit this config's state: .*in the checkpoint, float32\[64\] here",
    )
    # Rerunning the finished run says where it ended, not an empty line.
    with pytest.raises(SystemExit, match="holds a run trained with another config"):
        train.main([str(config_file), "--workdir", str(workdir), "train.steps=2"])


def test_compress_weights_and_files(tmp_path):
    args = ["--weights", str(tmp_path / "absent.safetensors")]
    wav = tmp_path / "a.wav"
    from trainers.data import speech

    speech.write_wav(str(wav), np.zeros(2400, np.float32), 24000)
    one_line_exit(compress.main, ["encode", str(wav), str(tmp_path / "c.npz"), *args], "absent.safetensors")
    (tmp_path / "damaged.safetensors").write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":')
    one_line_exit(
        compress.main,
        ["encode", str(wav), str(tmp_path / "c.npz"), "--weights", str(tmp_path / "damaged.safetensors")],
        "cannot load codec weights .*damaged",
    )


def test_truncated_latents_are_named(tmp_path):
    from trainers.cli import InputError
    from trainers.tasks.diffusion import LatentSource

    np.savez(tmp_path / "train.npz", latents=np.zeros((4, 2, 2, 4)), labels=np.zeros(4))
    data = (tmp_path / "train.npz").read_bytes()
    (tmp_path / "train.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="train.npz cannot be read as .npz"):
        LatentSource(str(tmp_path), "train")


def test_bad_audio_in_the_eval_split_stops_before_training(tone_corpus, tmp_path):
    import shutil

    corpus = tmp_path / "corpus"
    shutil.copytree(tone_corpus, corpus)
    (corpus / "wav" / "test3.wav").write_bytes(b"")
    cfg = yaml.safe_load(config_lib.dump(tiny_config()))
    cfg.update(
        task="codec",
        model=TINY_CODEC,
    )
    cfg["data"] = dict(source="manifest", path=str(corpus), eval_split="test", resample=True, batch_size=16)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    one_line_exit(
        train.main,
        [str(path), "--workdir", str(tmp_path / "w")],
        r"split 'test': 1 of 6 audio files cannot be used: empty audio file .*test3.wav \(0 bytes\)",
    )
