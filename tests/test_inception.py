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


@pytest.mark.slow  # Inception compiled for 8 devices and one, and four 2048-dimensional distances: 45 s
def test_fid_command_computes_adm_metrics_over_devices(reference, tmp_path, capsys):
    """trainers.fid on two reference-batch files, the batches split over 8 devices and the
    last one padded: the numbers of the library on one device; a reference file's own
    statistics are used where it has them; bad files are named."""
    from safetensors.numpy import save_file

    from trainers import fid

    state_dict, _ = reference
    save_file(state_dict, str(tmp_path / "inception.safetensors"))
    rng = np.random.default_rng(0)
    samples, references = (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for n in (10, 12))
    np.savez(tmp_path / "samples.npz", arr_0=samples)
    np.savez(tmp_path / "reference.npz", arr_0=references)
    args = [str(tmp_path / "samples.npz"), str(tmp_path / "reference.npz"), "--inception"]
    args += [str(tmp_path / "inception.safetensors"), "--batch_size", "8", "--out", str(tmp_path / "m.json")]
    metrics = fid.main(args)
    assert json.loads((tmp_path / "m.json").read_text()) == metrics
    assert "fid: " in capsys.readouterr().out

    net = inception.create()
    out = jax.jit(net.apply)(inception.from_torch(state_dict, net), np.concatenate([samples, references]) / 255.0)
    ours, theirs = ({k: v[part] for k, v in out.items()} for part in (slice(0, 10), slice(10, None)))
    assert metrics["inception_score"] == pytest.approx(inception.inception_score(ours["logits"]), rel=1e-5)
    for name, key in (("fid", "pool"), ("sfid", "spatial")):
        expected = inception.frechet_distance(*inception.statistics(ours[key]), *inception.statistics(theirs[key]))
        assert metrics[name] == pytest.approx(expected, rel=1e-4), name
    assert (metrics["precision"], metrics["recall"]) == inception.precision_recall(theirs["pool"], ours["pool"])

    # A reference batch written with its statistics and activations gives the same numbers without them.
    assert fid.main([str(tmp_path / "reference.npz"), "--stats", str(tmp_path / "ref_stats.npz"), *args[2:6]]) is None
    with np.load(tmp_path / "ref_stats.npz") as f:
        assert {"arr_0", "mu", "sigma", "mu_s", "sigma_s", "pool", "spatial"} <= set(f.files)
    assert fid.main([str(tmp_path / "samples.npz"), str(tmp_path / "ref_stats.npz"), *args[2:6]]) == metrics

    stats = {"mu": np.ones(2048), "sigma": np.eye(2048), "mu_s": np.ones(2023), "sigma_s": np.eye(2023)}
    np.savez(tmp_path / "with_stats.npz", arr_0=references, **stats)
    (mu, sigma), (mu_s, sigma_s) = fid.reference_statistics(str(tmp_path / "with_stats.npz"), theirs)
    assert (mu == 1).all() and (sigma_s == np.eye(2023)).all()

    from test_errors import one_line_exit

    np.savez(tmp_path / "bad.npz", images=samples)
    one_line_exit(
        fid.main, [str(tmp_path / "bad.npz"), *args[1:]], r"bad.npz: no arr_0 \(the images\); it holds images"
    )
    np.savez(tmp_path / "bad.npz", arr_0=samples / 255.0)
    one_line_exit(fid.main, [str(tmp_path / "bad.npz"), *args[1:]], r"arr_0 is float64 \(10, 32, 32, 3\); expected")
