"""A released FSMN-VAD folder (FunASR's fsmn-vad layout: model.pt or model.safetensors,
config.yaml, am.mvn) holding the weights, settings and statistics of
tests/data/fsmn_vad_reference.json."""

import json
import os
import sys

import numpy as np
import yaml
from helpers import sensevoice_release

DATA = os.path.join(os.path.dirname(__file__), "..", "data")
sys.path.insert(0, DATA)
from make_fsmn_vad_reference import recordings, seeded_weights  # noqa: E402

with open(os.path.join(DATA, "fsmn_vad_reference.json")) as f:
    REFERENCE = json.load(f)

__all__ = ["REFERENCE", "recordings", "write"]


def write(folder, fmt="safetensors"):
    """The released folder's layout with the reference's weights, config and am.mvn."""
    r = REFERENCE
    state = seeded_weights()
    state["encoder.out_linear2.linear.weight"][0] = r["silence_row"]
    state["encoder.out_linear2.linear.bias"][0] = r["silence_bias"]
    if fmt == "pt":
        import torch

        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, os.path.join(folder, "model.pt"))
    else:
        from safetensors.numpy import save_file

        save_file(state, os.path.join(folder, "model.safetensors"))
    conf = {"model": "FsmnVADStreaming", "model_conf": r["model_conf"], "encoder": "FSMN",
            "encoder_conf": r["encoder_conf"], "frontend": "WavFrontendOnline",
            "frontend_conf": r["frontend_conf"]}  # fmt: skip
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        yaml.safe_dump(conf, f)
    mvn = r["am_mvn"]
    sensevoice_release.write_am_mvn(
        os.path.join(folder, "am.mvn"), np.tile(mvn["mean"], 5), np.tile(mvn["inverse_std"], 5)
    )
    return str(folder)
