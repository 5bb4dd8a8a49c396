import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.mambaout import VARIANTS, MambaOut, create, from_torch
from jaxmodels.nn import load_state_dict


@pytest.mark.parametrize("case", ["m1", "m2"])
def test_reproduces_reference_outputs(fixtures_dir, case):
    folder = fixtures_dir / "mambaout" / case
    model = MambaOut(**json.loads((folder / "config.json").read_text()))
    io = np.load(folder / "io.npz")
    variables = from_torch(load_state_dict(folder / "weights.safetensors"), model)
    x = io["x_nchw"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(model.apply(variables, x), io["logits"], atol=1e-4, rtol=1e-4)
    stages = model.apply(variables, x, method=MambaOut.forward_stages)
    for i, feature in enumerate(stages):
        np.testing.assert_allclose(feature, io[f"stage{i}_nhwc"], atol=1e-4, rtol=1e-4)


def test_config_inferred_from_state_dict(fixtures_dir):
    folder = fixtures_dir / "mambaout" / "m2"
    io = np.load(folder / "io.npz")
    variables = from_torch(str(folder / "weights.safetensors"))  # a path, model inferred
    model = MambaOut(**json.loads((folder / "config.json").read_text()))
    np.testing.assert_allclose(model.apply(variables, io["x_nchw"].transpose(0, 2, 3, 1)), io["logits"], atol=1e-4)


def test_torch_pickle_checkpoint(fixtures_dir, tmp_path):
    torch = pytest.importorskip("torch")
    folder = fixtures_dir / "mambaout" / "m1"
    state = load_state_dict(folder / "weights.safetensors")
    torch.save({"model": {k: torch.from_numpy(v) for k, v in state.items()}}, tmp_path / "m1.pth")
    model = MambaOut(**json.loads((folder / "config.json").read_text()))
    a = from_torch(load_state_dict(tmp_path / "m1.pth"), model)
    b = from_torch(state, model)
    assert jax.tree.all(jax.tree.map(np.array_equal, a, b))


def test_wrong_checkpoint_names_the_problem(fixtures_dir):
    state = load_state_dict(fixtures_dir / "mambaout" / "m1" / "weights.safetensors")
    model = MambaOut(**json.loads((fixtures_dir / "mambaout" / "m2" / "config.json").read_text()))
    with pytest.raises(
        ValueError,
        match=r"(?s)missing parameters: stages_0_1.*shape mismatches: "
        r"downsample_layers.0.conv1.bias: checkpoint \(8,\) vs model \(4,\)",
    ):
        from_torch(state, model)
    del state["head.fc2.bias"]
    state["head.extra.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match=r"(?s)unexpected keys: head.extra.weight.*missing parameters: head/fc2/bias"):
        from_torch(state, MambaOut(**json.loads((fixtures_dir / "mambaout" / "m1" / "config.json").read_text())))
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        load_state_dict("nowhere.safetensors")


@pytest.mark.slow  # five published models traced
def test_published_parameter_counts(fixtures_dir):
    expected = json.loads((fixtures_dir / "mambaout" / "param_counts.json").read_text())
    assert set(expected) == set(VARIANTS)
    for name, count in expected.items():
        model = create(name)
        shapes = jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3))))
        assert sum(x.size for x in jax.tree.leaves(shapes)) == count, name


def test_create_rejects_unknown_names():
    with pytest.raises(ValueError, match="valid: mambaout_femto"):
        create("mambaout_huge")
    with pytest.raises(ValueError, match="unknown MambaOut argument"):
        create("mambaout_tiny", widths=[1])
    with pytest.raises(ValueError, match="NHWC"):
        m = create("mambaout_femto", dims=(8, 8, 8, 8), depths=(1, 1, 1, 1))
        m.init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 32, 32)))


@pytest.mark.slow  # compiles the train step twice
def test_drop_path_and_remat_train_mode():
    model = create("mambaout_femto", depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), drop_path_rate=0.5, num_classes=3)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
    variables = model.init(jax.random.PRNGKey(0), x)
    eval_out = model.apply(variables, x)
    a = model.apply(variables, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(2)})
    b = model.clone(remat=True).apply(variables, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(2)})
    assert not np.allclose(a, eval_out)  # stochastic depth acts in training
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # remat changes memory, not numbers


def test_blocked_dense_gradients_are_the_dense_layers():
    """BlockedDense's column and row blocks (with their own kernel gradient) against one x @ kernel + bias."""
    from jaxmodels.mambaout.model import BlockedDense

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 6))
    layer = BlockedDense(6, 10)
    params = nn.unbox(layer.init(jax.random.PRNGKey(1), x, (4, 6), method="columns")["params"])
    dense = lambda p, x: x @ p["kernel"] + p["bias"]  # noqa: E731
    weights = jnp.arange(1.0, 11.0)  # a loss that weighs every output channel differently

    def blocked_columns(p, x):
        pieces = layer.apply({"params": p}, x, (4, 6), method="columns")
        return (jnp.concatenate(pieces, -1) ** 2 * weights).sum()

    def blocked_rows(p, x):
        return (layer.apply({"params": p}, [x[..., :2], x[..., 2:]], method="rows") ** 2 * weights).sum()

    want = jax.grad(lambda p, x: (dense(p, x) ** 2 * weights).sum(), argnums=(0, 1))(params, x)
    for blocked in (blocked_columns, blocked_rows):
        got = jax.grad(blocked, argnums=(0, 1))(params, x)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_gelu_is_the_exact_gelu():
    """jaxmodels.nn.gelu (the erf form) and its gradient against float64 math: x Phi(x), Phi(x) + x phi(x)."""
    import math

    from jaxmodels.nn import gelu

    x = np.linspace(-12, 12, 20001, dtype=np.float32)
    x64 = x.astype(np.float64)
    cdf = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x64])
    pdf = np.exp(-0.5 * x64**2) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(gelu(jnp.asarray(x)), x64 * cdf, rtol=1e-6, atol=2e-6)
    np.testing.assert_allclose(jax.vmap(jax.grad(gelu))(jnp.asarray(x)), cdf + x64 * pdf, rtol=1e-6, atol=1e-6)


def test_depthwise_conv_paths_agree(monkeypatch):
    from jaxmodels.nn import depthwise_conv

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 7, 6))
    w = jax.random.normal(jax.random.PRNGKey(1), (5, 5, 1, 6))
    g = jax.random.normal(jax.random.PRNGKey(2), x.shape)

    def value_and_grads(x, w):  # the CPU path's backward is its own (custom_vjp)
        out, vjp = jax.vjp(depthwise_conv, x, w)
        return (out, *vjp(g))

    shifted = value_and_grads(x, w)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    native = value_and_grads(x, w)
    for a, b, name in zip(shifted, native, ("output", "input gradient", "kernel gradient")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4, err_msg=name)


def test_depthwise_kernel_gradient_sums_bfloat16_in_float32():
    """Each tap sums N*H*W products, far too many to add up in bfloat16's 8-bit mantissa."""
    from jaxmodels.nn import depthwise_conv

    x = jax.random.normal(jax.random.PRNGKey(0), (4, 28, 28, 8), jnp.bfloat16)
    g = jax.random.normal(jax.random.PRNGKey(1), x.shape, jnp.bfloat16)
    w = jnp.zeros((7, 7, 1, 8), jnp.bfloat16)
    dw = jax.vjp(lambda w: depthwise_conv(x, w), w)[1](g)[0]
    x64, g64 = np.asarray(x, np.float64), np.asarray(g, np.float64)
    padded = np.pad(x64, ((0, 0), (3, 3), (3, 3), (0, 0)))
    want = np.stack([[(padded[:, i : i + 28, j : j + 28] * g64).sum((0, 1, 2)) for j in range(7)] for i in range(7)])
    # Only the result's own rounding to bfloat16 (2^-9 relative) is left.
    np.testing.assert_allclose(np.asarray(dw, np.float64)[:, :, 0], want, rtol=2**-8, atol=1e-2)


def test_depthwise_kernel_gradient_is_one_all_reduce():
    """With the batch sharded, the CPU path's kernel gradient crosses devices once, not once
    per tap: each collective operand costs a round of gloo between processes."""
    import re

    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxmodels.nn import depthwise_conv

    mesh = jax.make_mesh((8,), ("data",))
    x = jax.device_put(jnp.ones((8, 6, 6, 4)), NamedSharding(mesh, P("data")))
    w = jax.device_put(jnp.ones((7, 7, 1, 4)), NamedSharding(mesh, P()))
    grad = jax.jit(jax.grad(lambda w, x: depthwise_conv(x, w).sum()), out_shardings=NamedSharding(mesh, P()))
    hlo = grad.lower(w, x).compile().as_text()
    # The result type of each all-reduce: one f32[49,4] (the 49 taps of 4 channels), where
    # autodiff of the shifted sum gives a tuple of 49 f32[4].
    reduced = re.findall(r"= (\S+|\(.*?\)) all-reduce(?:-start)?\(", hlo)
    assert [t.split("{")[0] for t in reduced] == ["f32[49,4]"], reduced
