"""Data-parallel, FSDP and tensor-parallel layouts give the same losses and updates as one device.

The steps are SGD's (with momentum), whose update is proportional to the gradient, so the
updates compare at float32 reduction-order tolerance (conftest.assert_same_updates);
test_optim checks that each optimizer steps as torch's.
"""

import jax
import numpy as np
import pytest
from conftest import assert_same_updates, tiny_config

from trainers import sharding
from trainers.loop import Trainer

SGD = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "warmup_steps": 0}


def run_steps(cfg, devices=None, steps=2):
    """(trainer, losses, params before, params after)."""
    trainer = Trainer(cfg, devices)
    state = trainer.init(0)
    before = jax.device_get(state.params)
    batch_np = trainer.task.example_batch(cfg.data.batch_size)
    rng = np.random.default_rng(0)
    batch_np["image"] = rng.integers(0, 256, batch_np["image"].shape, dtype=np.uint8)
    batch_np["label"] = rng.integers(0, 10, batch_np["label"].shape).astype(np.int32)
    losses = []
    with trainer.context():
        for _ in range(steps):
            batch = sharding.to_global(trainer.mesh, batch_np, cfg.data.batch_size)
            state, metrics = trainer.train_step(state, batch)
            losses.append(float(metrics["train/loss"]))
    return trainer, losses, before, jax.device_get(state.params)


@pytest.fixture(scope="module")
def single_device_run():
    return run_steps(tiny_config(mesh={"data": 1}, optimizer=SGD), devices=jax.devices()[:1])


@pytest.mark.parametrize(
    "mesh",
    [
        pytest.param({"data": 8, "fsdp": 1, "tensor": 1}, id="data"),
        pytest.param({"data": 1, "fsdp": 8, "tensor": 1}, id="fsdp", marks=pytest.mark.slow),
        pytest.param({"data": 2, "fsdp": 2, "tensor": 2}, id="fsdp+tensor", marks=pytest.mark.slow),
    ],
)
def test_layouts_match_one_device(single_device_run, mesh):
    _, ref_losses, before, ref_params = single_device_run
    trainer, losses, _, params = run_steps(tiny_config(mesh=mesh, optimizer=SGD))
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert_same_updates(before, params, ref_params)
    specs = [s.spec for s in jax.tree.leaves(trainer.param_shardings)]
    if mesh["fsdp"] > 1:
        assert any("fsdp" in str(s) for s in specs)
    if mesh["tensor"] > 1:
        assert any("tensor" in str(s) for s in specs)


@pytest.mark.slow
def test_grad_accumulation_matches_full_batch(single_device_run):
    _, ref_losses, before, ref_params = single_device_run
    _, losses, _, params = run_steps(tiny_config(mesh={"data": 8}, optimizer={**SGD, "grad_accum_steps": 2}))
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert_same_updates(before, params, ref_params)


def test_bad_mesh_and_batch_sizes_are_errors():
    with pytest.raises(ValueError, match="does not fit 8 devices"):
        sharding.make_mesh(3, 1, 1)
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        sharding.make_mesh(-1, -1, 1)
    with pytest.raises(ValueError, match="data.batch_size=12 must divide"):
        Trainer(tiny_config(data={"batch_size": 12}))


def test_indivisible_dims_stay_replicated():
    mesh = sharding.make_mesh(1, 8, 1)
    assert sharding.mesh_spec(("embed", "mlp"), (12, 16), mesh)[0] is None
    assert sharding.mesh_spec(("embed", "mlp"), (16, 16), mesh)[0] == "fsdp"


def test_a_trainer_builds_inside_another_trainers_context():
    """Helper runs (a recogniser scoring TTS, a classifier scoring DiT samples) are loaded
    during another run's evaluation, under its mesh and axis rules."""
    outer = Trainer(tiny_config(mesh={"data": 8}))
    with outer.context():
        inner = Trainer(tiny_config(mesh={"data": 2, "fsdp": 4}))
    assert dict(inner.mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    specs = [str(s.spec) for s in jax.tree.leaves(inner.param_shardings)]
    assert any("fsdp" in spec for spec in specs), specs


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_grouped_convolution_partitions_over_the_batch(groups):
    # XLA's partitioner all-gathers the batch of one grouped convolution (several channels a
    # group); grouped_conv's convolution per group keeps each device to its rows.
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxmodels.nn.layers import grouped_conv

    mesh = sharding.make_mesh()
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.standard_normal((8, 50, 32), np.float32), NamedSharding(mesh, P("data")))
    w = jax.device_put(rng.standard_normal((5, 32 // groups, 16), np.float32), NamedSharding(mesh, P()))
    spec = ("NWC", "WIO", "NWC")
    conv = jax.jit(lambda x, w: grouped_conv(x, w, (2,), [(2, 2)], groups, spec))
    assert "all-gather" not in conv.lower(x, w).compile().as_text()
    one = jax.lax.conv_general_dilated(
        jnp.asarray(x), jnp.asarray(w), (2,), [(2, 2)], dimension_numbers=spec, feature_group_count=groups
    )
    np.testing.assert_allclose(np.asarray(conv(x, w)), np.asarray(one), rtol=1e-5, atol=1e-5)


def assert_gradients_on_mesh(loss, want, params, x, param_specs):
    """jax.grad(loss) of (params, x) equals ``want``, unsharded and on a (data 4, tensor 2) mesh with
    x's batch over "data" and each parameter laid out as its PartitionSpec in ``param_specs``."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = sharding.make_mesh(data=4, tensor=2)
    placed = (
        jax.device_put(params, jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs)),
        jax.device_put(x, NamedSharding(mesh, P("data"))),
    )
    for args in ((params, x), placed):
        got = jax.jit(jax.grad(loss, argnums=(0, 1)))(*args)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("features", [24, 4])
def test_dense_gradients_match_autodiff_sharded(features):
    # Dense takes its kernel gradient by its own rule (dense_product), widening (24) or narrowing (4);
    # with the batch sharded over "data" and the kernel over "tensor" it must give autodiff's numbers.
    import flax.linen as nn
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    from jaxmodels.nn import Dense

    layer = Dense(features)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 5, 12), np.float32)
    params = nn.unbox(layer.init(jax.random.PRNGKey(0), x)["params"])
    weights = jnp.linspace(0.5, 2.0, features)  # every output channel weighed differently

    want = jax.grad(lambda p, x: ((x @ p["kernel"] + p["bias"]) ** 2 * weights).sum(), argnums=(0, 1))(params, x)
    layer_loss = lambda p, x: (layer.apply({"params": p}, x) ** 2 * weights).sum()  # noqa: E731
    assert_gradients_on_mesh(layer_loss, want, params, x, {"kernel": P(None, "tensor"), "bias": P()})


def test_attention_projection_gradients_match_autodiff_sharded():
    # Attention's projections (kernels of several axes, the heads over "tensor") through
    # dense_product: their gradients are autodiff's of the einsums, unsharded and sharded.
    import flax.linen as nn
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    from jaxmodels.nn.attention import Projection

    qkv = Projection("bld,dkhe->blkhe", (12, 3, 4, 5), ("embed", None, "heads", "kv"), 1)
    out = Projection("blhe,hed->bld", (4, 5, 12), ("heads", "kv", "embed"), 2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 6, 12), np.float32)
    params = {
        "qkv": nn.unbox(qkv.init(jax.random.PRNGKey(0), x)["params"]),
        "out": nn.unbox(out.init(jax.random.PRNGKey(1), np.zeros((8, 6, 4, 5), np.float32))["params"]),
    }
    params = jax.tree.map(lambda a: a + 0.1, params)  # the biases start at zero
    probe = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)  # every output weighed differently

    def layers_loss(p, x):
        h = jnp.tanh(qkv.apply({"params": p["qkv"]}, x)[:, :, 1])
        return jnp.sum(out.apply({"params": p["out"]}, h) * probe)

    def einsum_loss(p, x):
        h = jnp.tanh((jnp.einsum("bld,dkhe->blkhe", x, p["qkv"]["kernel"]) + p["qkv"]["bias"])[:, :, 1])
        return jnp.sum((jnp.einsum("blhe,hed->bld", h, p["out"]["kernel"]) + p["out"]["bias"]) * probe)

    want = jax.grad(einsum_loss, argnums=(0, 1))(params, x)
    layouts = {
        "qkv": {"kernel": P(None, None, "tensor"), "bias": P(None, "tensor")},
        "out": {"kernel": P("tensor"), "bias": P()},
    }
    assert_gradients_on_mesh(layers_loss, want, params, x, layouts)
