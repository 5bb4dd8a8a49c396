"""FID's Inception-v3 and the Frechet distance against pytorch-fid (tests/data/make_inception_reference.py)."""

import json
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT

from jaxmodels import inception

sys.path.insert(0, str(ROOT / "tests" / "data"))
from make_inception_reference import random_weights  # noqa: E402


@pytest.fixture(scope="module")
def reference():
    with np.load(ROOT / "tests" / "data" / "inception_reference.npz") as f:
        ref = {k: f[k] for k in f.files}
    state_dict = random_weights(json.loads(str(ref["shapes"])))
    state_dict.update({k[6:]: v for k, v in ref.items() if k.startswith("stats/")})
    state_dict["fc.bias"] = np.ones(1008, np.float32)  # in the released file; not in the logits
    return state_dict, ref


def test_features_equal_pytorch_fid(reference):
    state_dict, ref = reference
    net = inception.create("fid_inception_v3")
    variables = inception.from_torch(state_dict, net)
    n_params = sum(v.size for v in jax.tree.leaves(variables["params"]))
    assert n_params == int(ref["torch_params"]) - 1008  # all of torchvision's parameters but the classifier's bias
    out = jax.jit(net.apply)(variables, ref["images"])
    assert out["pool"].shape == (4, 2048) and out["logits"].shape == (4, 1008) and out["spatial"].shape == (4, 2023)
    for name in ("pool", "logits", "spatial"):
        scale = np.abs(ref[name]).max()
        np.testing.assert_allclose(out[name], ref[name], rtol=1e-4, atol=1e-4 * scale, err_msg=name)


@pytest.mark.parametrize("case", ["full_rank", "singular"])
def test_frechet_distance_equals_pytorch_fid(reference, case):
    _, ref = reference
    mu1, sigma1, mu2, sigma2, expected = (ref[f"frechet/{case}/{i}"] for i in range(5))
    assert inception.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(float(expected), rel=1e-5)
    assert inception.frechet_distance(mu1, sigma1, mu1, sigma1) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match=r"statistics of different sizes: means \(32,\) and \(31,\)"):
        inception.frechet_distance(np.zeros(32), np.eye(32), np.zeros(31), np.eye(31))


def test_a_wrong_weight_file_is_named(reference):
    state_dict, _ = reference
    net = inception.create()
    broken = {k: v for k, v in state_dict.items() if not k.startswith("Mixed_7c.branch_pool")}
    with pytest.raises(ValueError, match="missing parameters: .*Mixed_7c/branch_pool"):
        inception.from_torch(broken, net)


def test_inception_score_and_precision_recall_equal_torch_fidelity(reference):
    _, ref = reference
    assert inception.inception_score(ref["is_logits"], split_size=10) == pytest.approx(
        float(ref["is_score"]), rel=1e-9
    )
    precision, recall = ref["pr_precision_recall"]
    for block in (10000, 64):  # in one block or several
        assert inception.precision_recall(ref["pr_real"], ref["pr_generated"], block=block) == pytest.approx(
            (precision, recall)
        )
