import pytest
import yaml

from trainers import config as config_lib


def write(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"task": "classification", **data}))
    return str(path)


def test_repo_configs_load():
    import pathlib

    tasks = {}
    for path in sorted(pathlib.Path(__file__).parents[1].glob("configs/*.yaml")):
        cfg = config_lib.load(str(path))
        assert config_lib.parse(config_lib.to_dict(cfg)) == cfg, path
        tasks[path.stem] = cfg.task
    assert tasks["ctc_speech"] == tasks["sensevoice_small"] == "ctc" and tasks["valle"] == "tts", tasks
    assert {t for name, t in tasks.items() if name.startswith("mambaout")} == {"classification"}


def test_unknown_key_names_it_and_lists_valid(tmp_path):
    path = write(tmp_path, {"optimizer": {"lr": 1e-3, "learning_rate": 1}})
    with pytest.raises(config_lib.ConfigError, match=r"optimizer.learning_rate.*valid keys of optimizer: name, lr"):
        config_lib.load(path)
    with pytest.raises(config_lib.ConfigError, match="unknown config key trainer; valid keys of the config: task"):
        config_lib.load(write(tmp_path, {"trainer": {}}))
    # A family's section is its own: image keys are no audio family's.
    with pytest.raises(config_lib.ConfigError, match=r"unknown config key data.image_size; valid keys of data: "):
        config_lib.load(write(tmp_path, {"task": "ctc", "data": {"image_size": 8}}))


def test_evals_are_checked_by_the_plugin_they_name(tmp_path):
    evals = [{"name": "classifier_agreement", "run": "runs/digits", "every": 1000}]
    cfg = config_lib.load(write(tmp_path, {"task": "diffusion", "evals": evals}))
    assert (cfg.evals[0].run, cfg.evals[0].every) == ("runs/digits", 1000)
    assert config_lib.parse(config_lib.to_dict(cfg)) == cfg
    listed = "unknown evaluator 'kid'; valid: acoustic_consistency, classifier_agreement, fid, "
    with pytest.raises(config_lib.ConfigError, match=listed):
        config_lib.load(write(tmp_path, {"evals": [{"name": "kid"}]}))
    with pytest.raises(config_lib.ConfigError, match=r"unknown config key evals\[0\].runs; valid keys of evals\[0\]"):
        config_lib.load(write(tmp_path, {"evals": [{"name": "classifier_agreement", "runs": "x"}]}))
    with pytest.raises(config_lib.ConfigError, match="every must be at least 0"):
        config_lib.load(write(tmp_path, {"evals": [{"name": "speech_wer", "every": -1}]}))


def test_wrong_types_are_errors(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="train.steps: expected int, got str 'many'"):
        config_lib.load(write(tmp_path, {"train": {"steps": "many"}}))
    with pytest.raises(config_lib.ConfigError, match=r"optimizer.name: 'lamb' is not one of \['adamw'"):
        config_lib.load(write(tmp_path, {"optimizer": {"name": "lamb"}}))
    with pytest.raises(config_lib.ConfigError, match=r"data.crop_scale: expected 2 values"):
        config_lib.load(write(tmp_path, {"data": {"crop_scale": [0.1, 0.5, 1.0]}}))
    with pytest.raises(config_lib.ConfigError, match="train.eval_every must be at least 1, not 0"):
        config_lib.load(write(tmp_path, {"train": {"eval_every": 0}}))


def test_overrides_and_round_trip(tmp_path):
    path = write(tmp_path, {"optimizer": {"lr": 1e-3}})
    cfg = config_lib.load(path, ["optimizer.lr=5e-4", "mesh.fsdp=-1", "model.args.dims=[8,16]", "train.remat=true"])
    assert cfg.optimizer.lr == 5e-4 and cfg.mesh.fsdp == -1 and cfg.train.remat
    assert cfg.model.args == {"dims": [8, 16]}
    again = config_lib.load(write(tmp_path, config_lib.to_dict(cfg)))
    assert again == cfg
    with pytest.raises(config_lib.ConfigError, match="dotted.key=value"):
        config_lib.load(path, ["optimizer.lr"])
