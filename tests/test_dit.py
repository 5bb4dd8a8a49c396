"""DiT and its Gaussian diffusion against the official PyTorch outputs in ../shared/fixtures/dit."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.diffusion import create_diffusion, make_schedule
from jaxmodels.dit import DiT, create, forward_macs, from_torch, param_count
from jaxmodels.nn import load_state_dict

CASES = ["s_p2", "p4_nosigma"]


def nhwc(a):
    return np.moveaxis(a, -3, -1)  # (..., C, H, W) -> (..., H, W, C)


def rel_err(a, b):
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


@pytest.fixture(scope="module", params=CASES)
def case(request):
    from conftest import FIXTURES

    d = FIXTURES / "dit" / request.param
    if not d.is_dir():
        pytest.skip(f"DiT fixtures not found at {d}")
    model = DiT(**json.loads((d / "config.json").read_text()))
    variables = from_torch(load_state_dict(str(d / "weights.safetensors")), model)
    return model, variables, np.load(d / "io.npz"), np.load(d / "diffusion.npz")


def test_forward_and_intermediates(case):
    model, variables, io, _ = case
    out, state = model.apply(variables, nhwc(io["x_nchw"]), io["t"], io["y"], capture_intermediates=True)
    assert rel_err(out, nhwc(io["out_nchw"])) < 1e-4
    inter = state["intermediates"]
    assert rel_err(inter["t_embedder"]["__call__"][0], io["inter/t_emb"]) < 1e-4
    assert rel_err(inter["y_embedder"]["__call__"][0], io["inter/y_emb"]) < 1e-4
    assert rel_err(inter["x_embedder"]["__call__"][0], io["inter/patch_tokens"]) < 1e-4
    blocks = inter["blocks"]["__call__"][0]  # the scanned blocks' outputs, stacked
    for i in range(model.depth):
        assert rel_err(blocks[i], io[f"inter/block{i}_out"]) < 1e-4
    assert rel_err(inter["final_layer"]["__call__"][0], io["inter/final_tokens"]) < 1e-4


@pytest.mark.parametrize("prefix", ["cfg", "cfg2"])
def test_guided_forward(case, prefix):
    model, variables, io, _ = case
    out = model.apply(
        variables,
        nhwc(io[f"{prefix}_x_nchw"]),
        io[f"{prefix}_t"],
        io[f"{prefix}_y"],
        float(io[f"{prefix}_scale"]),
        method=DiT.forward_with_cfg,
    )
    assert rel_err(out, nhwc(io[f"{prefix}_out_nchw"])) < 1e-4


def test_guidance_on_all_channels_option(case):
    model, variables, io, _ = case
    x, t, y, s = nhwc(io["cfg_x_nchw"]), io["cfg_t"], io["cfg_y"], 4.0
    out = model.apply(variables, x, t, y, s, True, method=DiT.forward_with_cfg)
    raw = model.apply(variables, np.concatenate([x[:2], x[:2]]), t, y)
    c = model.in_channels
    expected = raw[2:, ..., :c] + s * (raw[:2, ..., :c] - raw[2:, ..., :c])
    np.testing.assert_allclose(out[:2, ..., :c], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[2:, ..., :c], expected, rtol=1e-5, atol=1e-5)


def test_schedules_equal_upstream_in_float64(case):
    model, _, _, diff = case
    for spec in map(str, diff["schedule_specs"]):
        ours = make_schedule(spec)
        spec = spec or "full"
        np.testing.assert_array_equal(ours.timestep_map, diff[f"schedule/{spec}/timestep_map"])
        for name in [
            "betas",
            "alphas_cumprod",
            "alphas_cumprod_prev",
            "alphas_cumprod_next",
            "sqrt_alphas_cumprod",
            "sqrt_one_minus_alphas_cumprod",
            "log_one_minus_alphas_cumprod",
            "sqrt_recip_alphas_cumprod",
            "sqrt_recipm1_alphas_cumprod",
            "posterior_variance",
            "posterior_log_variance_clipped",
            "posterior_mean_coef1",
            "posterior_mean_coef2",
        ]:
            np.testing.assert_allclose(getattr(ours, name), diff[f"schedule/{spec}/{name}"], rtol=1e-12, err_msg=name)


def _check_losses(terms, diff, group, t):
    for name in ["mse", "loss", "vb"] if bool(diff["learn_sigma"]) else ["mse", "loss"]:
        ours, ref = np.asarray(terms[name]), diff[f"{group}/{name}"]
        well = t != 0  # the t = 0 decoder NLL is ill-conditioned in float32 (fixture README)
        if name == "mse":
            well = np.ones_like(well)
        np.testing.assert_allclose(ours[well], ref[well], rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(ours[~well], ref[~well], rtol=5e-2, err_msg=name)


def test_training_losses(case):
    model, variables, _, diff = case
    diffusion = create_diffusion("", learn_sigma=bool(diff["learn_sigma"]))
    x, t, y = nhwc(diff["train/x_start_nchw"]), diff["train/t"], diff["train/y"]
    terms = diffusion.training_losses(
        lambda xt, ts: model.apply(variables, xt, ts, y), x, t, nhwc(diff["train/noise_nchw"])
    )
    _check_losses(terms, diff, "train", t)


def test_training_losses_with_label_dropout(case):
    model, variables, _, diff = case
    diffusion = create_diffusion("", learn_sigma=bool(diff["learn_sigma"]))
    x, t, y = nhwc(diff["train/x_start_nchw"]), diff["train/t"], diff["train/y"]
    drop = (diff["train_labeldrop/drop_uniform"] < np.float32(model.class_dropout_prob)).astype(np.int32)
    np.testing.assert_array_equal(np.where(drop, model.num_classes, y), diff["train_labeldrop/y_effective"])

    def model_fn(xt, ts):
        return model.apply(variables, xt, ts, y, train=True, force_drop_ids=drop)

    _check_losses(
        diffusion.training_losses(model_fn, x, t, nhwc(diff["train/noise_nchw"])), diff, "train_labeldrop", t
    )


@pytest.mark.parametrize("group", ["ddpm_plain", "ddpm_cfg", "ddim_plain", "ddim_cfg"])
def test_sampling_loops_replay_the_reference(case, group):
    model, variables, _, diff = case
    diffusion = create_diffusion(str(diff[f"{group}/respacing"]), learn_sigma=bool(diff["learn_sigma"]))
    y = diff[f"{group}/y"]
    if group.endswith("cfg"):
        scale = float(diff[f"{group}/cfg_scale"])

        def model_fn(x, ts):
            return model.apply(variables, x, ts, y, scale, method=DiT.forward_with_cfg)
    else:

        def model_fn(x, ts):
            return model.apply(variables, x, ts, y)

    run = jax.jit(
        lambda x_T, noise: diffusion.sample(model_fn, x_T, sampler=group[:4], step_noise=noise, trajectory=True)
    )
    sample, xs, x0s = run(nhwc(diff[f"{group}/initial_noise_nchw"]), nhwc(diff[f"{group}/step_noise_nchw"]))
    np.testing.assert_array_equal(
        diffusion.model_timesteps(jnp.asarray(diff[f"{group}/step_index"])), diff[f"{group}/model_timestep"]
    )
    ref_xs, ref_x0s = nhwc(diff[f"{group}/xt_nchw"]), nhwc(diff[f"{group}/pred_xstart_nchw"])
    for k in range(len(ref_xs)):
        assert rel_err(xs[k], ref_xs[k]) < 1e-4, (group, k)
        assert rel_err(x0s[k], ref_x0s[k]) < 1e-4, (group, k)
    assert rel_err(sample, nhwc(diff[f"{group}/sample_nchw"])) < 1e-4


@pytest.mark.slow  # twelve published models traced
def test_named_configs_have_the_official_counts(fixtures_dir):
    counts = json.loads((fixtures_dir / "dit" / "param_counts.json").read_text())
    facts = json.loads((fixtures_dir / "dit" / "model_facts.json").read_text())
    assert len(counts) == 12
    for name, n in counts.items():
        model = create(name)
        assert param_count(model) == n, name
        assert param_count(model, trainable_only=True) == facts[name]["params_trainable"], name
        assert forward_macs(model) == round(facts[name]["analytic_gmacs"] * 1e9), name


def test_a_wrong_checkpoint_is_named(fixtures_dir):
    sd = load_state_dict(str(fixtures_dir / "dit" / "s_p2" / "weights.safetensors"))
    with pytest.raises(ValueError, match=r"layers \[0, 1\], the model has 3"):
        from_torch(sd, DiT(input_size=8, patch_size=2, hidden_size=64, depth=3, num_heads=4, num_classes=10))
    with pytest.raises(ValueError, match="num_heads"):
        from_torch(sd)
    variables = from_torch(sd, num_heads=4)  # the rest is read off the weights
    assert variables["params"]["blocks"]["attn"]["qkv"]["kernel"].shape == (2, 64, 3, 4, 16)
    with pytest.raises(ValueError, match="DiT expects"):
        DiT(input_size=8, patch_size=2, hidden_size=64, depth=2, num_heads=4, num_classes=10).init(
            jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 4)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)
        )


def test_fresh_model_is_adaln_zero():
    model = create("DiT-S/8", input_size=16, depth=2, num_classes=10)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 4))
    variables = nn.meta.unbox(model.init(jax.random.PRNGKey(0), x, jnp.ones((2,)), jnp.zeros((2,), jnp.int32)))
    out = model.apply(variables, x, jnp.ones((2,)), jnp.zeros((2,), jnp.int32))
    assert out.shape == (2, 16, 16, 8) and not np.asarray(out).any()  # zero-initialised output layer
    blocks = variables["params"]["blocks"]["adaLN_modulation_1"]
    assert not np.asarray(blocks["kernel"]).any() and not np.asarray(blocks["bias"]).any()


def test_sampling_sharded_over_devices_equals_one_device():
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    model = create("DiT-S/4", input_size=8, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=3)
    x_T = jax.random.normal(jax.random.PRNGKey(1), (8, 8, 8, 4))
    y = jnp.arange(8) % 3
    variables = nn.meta.unbox(model.init(jax.random.PRNGKey(0), x_T, jnp.zeros((8,)), y))
    diffusion = create_diffusion("ddim10")

    def run(x_T, y):
        return diffusion.sample(
            lambda x, t: model.apply(variables, x, t, y), x_T, sampler="ddpm", key=jax.random.PRNGKey(2)
        )

    mesh = jax.make_mesh((8,), ("data",))
    rows = NamedSharding(mesh, P("data"))
    sharded = jax.jit(run, in_shardings=(rows, rows), out_shardings=rows)(x_T, y)
    assert len(sharded.sharding.device_set) == 8
    np.testing.assert_allclose(sharded, jax.jit(run)(x_T, y), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_latent_training_reads_npz_and_names_bad_files(tmp_path):
    from trainers import config as config_lib
    from trainers.loop import train
    from trainers.tasks.diffusion import LatentSource

    rng = np.random.default_rng(0)
    for split, n in (("train", 32), ("val", 16)):
        np.savez(
            tmp_path / f"{split}.npz",
            latents=rng.standard_normal((n, 8, 8, 4)).astype(np.float16),
            labels=rng.integers(0, 5, n),
        )
    cfg = config_lib.parse(
        {
            "task": "diffusion",
            "model": {
                "name": "DiT-S/4",
                "args": {
                    "input_size": 8,
                    "in_channels": 4,
                    "hidden_size": 32,
                    "depth": 1,
                    "num_heads": 2,
                    "num_classes": 5,
                },
            },
            "data": {"source": "latents", "path": str(tmp_path), "batch_size": 16, "eval_batch_size": 16},
            "train": {
                "steps": 2,
                "log_every": 1,
                "eval_every": 100,
                "checkpoint_every": 100,
                "async_checkpointing": False,
            },
            "diffusion": {"sample_respacing": "ddim5", "sampler": "ddim", "samples_per_class": 2},
        },
    )
    metrics = train(cfg, str(tmp_path / "run"))
    assert np.isfinite(metrics["eval/loss"]) and (tmp_path / "run" / "samples.png").is_file()

    np.savez(tmp_path / "bad.npz", latents=np.zeros((4, 8, 8, 4)))
    with pytest.raises(ValueError, match=r"bad.npz: missing \['labels'\]"):
        LatentSource(str(tmp_path), "bad")
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        LatentSource(str(tmp_path), "absent")


def test_unrolled_blocks_equal_the_loop(monkeypatch):
    """GPUs unroll the scanned blocks (BLOCK_UNROLL); outputs and gradients stay those of the loop."""
    from jaxmodels.dit import model as dit_model

    model = DiT(input_size=8, patch_size=4, hidden_size=32, depth=3, num_heads=2, num_classes=5)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 4))
    t, y = jnp.array([3, 700]), jnp.array([1, 4])
    params = model.init(jax.random.PRNGKey(1), x, t, y)["params"]
    # adaLN-Zero starts with every block an identity: perturb the parameters so that the blocks act.
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    params = treedef.unflatten([p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])

    def loss_and_grad():
        return jax.value_and_grad(lambda p: jnp.sum(model.apply({"params": p}, x, t, y) ** 2))(params)

    backend = jax.default_backend()
    monkeypatch.setattr(dit_model, "BLOCK_UNROLL", {backend: 1})
    loss_loop, grads_loop = loss_and_grad()
    monkeypatch.setattr(dit_model, "BLOCK_UNROLL", {backend: 0})
    loss_unrolled, grads_unrolled = loss_and_grad()
    assert float(loss_loop) > 0
    np.testing.assert_allclose(loss_unrolled, loss_loop, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads_unrolled), jax.tree.leaves(grads_loop), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_modulated_norm_gradients_are_autodiffs():
    """The blocks' norm and modulation under their own VJP: values and all three gradients those of
    flax's LayerNorm followed by modulate, differentiated by JAX; wrong by any term they fail."""
    from jaxmodels.dit.model import modulated_norm

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 7, 24)) * 3 + 1, jnp.float32)
    shift, scale = (jnp.asarray(rng.standard_normal((2, 24)), jnp.float32) for _ in range(2))
    probe = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)  # every output weighed differently
    norm = nn.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False, use_fast_variance=False)

    def reference(x, shift, scale):
        return norm.apply({}, x) * (1 + scale[:, None]) + shift[:, None]

    np.testing.assert_allclose(modulated_norm(x, shift, scale), reference(x, shift, scale), rtol=1e-5, atol=1e-5)
    got, want = (
        jax.grad(lambda *a: jnp.sum(f(*a) * probe), argnums=(0, 1, 2))(x, shift, scale)
        for f in (modulated_norm, reference)
    )
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_gelu_tanh_is_the_tanh_gelu():
    """jaxmodels.nn.gelu_tanh and its gradient against float64 math, in float32 and bfloat16."""
    from jaxmodels.nn import gelu_tanh

    def reference(x):
        """x/2 (1 + tanh(u)) and its derivative, u = sqrt(2/pi) (x + 0.044715 x^3)."""
        u = np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)
        du = np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * x**2)
        return 0.5 * x * (1 + np.tanh(u)), 0.5 * (1 + np.tanh(u)) + 0.5 * x * du / np.cosh(u) ** 2

    x = np.linspace(-8, 8, 2001)
    for dtype, tol in ((jnp.float32, 2e-6), (jnp.bfloat16, 2e-2)):
        xs = jnp.asarray(x, dtype)
        value, slope = reference(np.asarray(xs, np.float64))  # at the inputs as rounded to dtype
        np.testing.assert_allclose(np.asarray(gelu_tanh(xs), np.float64), value, rtol=tol, atol=tol)
        grad = jax.vmap(jax.grad(gelu_tanh))(xs)
        assert grad.dtype == dtype
        np.testing.assert_allclose(np.asarray(grad, np.float64), slope, rtol=tol, atol=tol)
