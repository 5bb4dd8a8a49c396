"""The optimizers from config step as torch.optim's (the upstream trainers' optimizers).

The sharded-equivalence tests compare steps under SGD, whose update is proportional to
the gradient; these tests check the other half: each optimizer, given the gradients,
moves the params as torch does.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainers.config import OptimizerConfig
from trainers.optim import make_optimizer

torch = pytest.importorskip("torch")


def run_both(cfg: OptimizerConfig, torch_optimizer, steps=3):
    """Params after ``steps`` updates with the same gradients: (ours, torch's).

    The kernel takes weight decay (timm's rule: matrices only), the bias does not; one
    gradient entry is far smaller than the rest, as the near-zero entries that make Adam
    sensitive to rounding.
    """
    rng = np.random.default_rng(0)
    params = {
        "kernel": rng.standard_normal((3, 4)).astype(np.float32),
        "bias": rng.standard_normal(4).astype(np.float32),
    }
    grads = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()} for _ in range(steps)]
    for g in grads:
        g["bias"][0] = 1e-7

    tx, _ = make_optimizer(cfg, total_steps=100)
    ours, state = jax.tree.map(jnp.asarray, params), tx.init(params)
    for g in grads:
        updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, ours)
        ours = optax.apply_updates(ours, updates)

    theirs = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
    opt = torch_optimizer(theirs)
    for g in grads:
        for k, p in theirs.items():
            p.grad = torch.from_numpy(g[k].copy())
        if cfg.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(list(theirs.values()), cfg.clip_grad_norm)
        opt.step()
    return jax.device_get(ours), {k: p.detach().numpy() for k, p in theirs.items()}


def groups(params, weight_decay):
    return [
        {"params": [params["kernel"]], "weight_decay": weight_decay},
        {"params": [params["bias"]], "weight_decay": 0.0},
    ]


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_adamw_steps_as_torch(clip):
    cfg = OptimizerConfig(
        name="adamw", lr=1e-2, weight_decay=0.05, b1=0.8, b2=0.95, schedule="constant", clip_grad_norm=clip
    )
    ours, theirs = run_both(cfg, lambda p: torch.optim.AdamW(groups(p, 0.05), lr=1e-2, betas=(0.8, 0.95), eps=1e-8))
    for k in ours:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_adam_steps_as_torch():
    # AudioCraft's codec optimizer: Adam, betas (0.5, 0.9), no weight decay.
    cfg = OptimizerConfig(name="adam", lr=3e-4, b1=0.5, b2=0.9, schedule="constant")
    ours, theirs = run_both(cfg, lambda p: torch.optim.Adam(list(p.values()), lr=3e-4, betas=(0.5, 0.9), eps=1e-8))
    for k in ours:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-6, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_steps_as_torch(nesterov):
    cfg = OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=1e-2, schedule="constant")
    ours, theirs = run_both(cfg, lambda p: torch.optim.SGD(groups(p, 1e-2), lr=0.1, momentum=0.9, nesterov=nesterov))
    for k in ours:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_inverse_sqrt_schedule_is_espnets_warmuplr():
    """CosyVoice's warmuplr (ESPnet's WarmupLR): lr * warmup^0.5 * min(n^-0.5, n * warmup^-1.5) at the n-th step."""
    from trainers.optim import schedule

    cfg = OptimizerConfig(lr=1e-3, schedule="inverse_sqrt", warmup_steps=2500)
    n = np.array([1, 100, 2500, 2501, 10000, 1_000_000])
    expected = 1e-3 * 2500**0.5 * np.minimum(n**-0.5, n * 2500**-1.5)
    np.testing.assert_allclose([schedule(cfg, 10)(step - 1) for step in n], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="inverse_sqrt needs optimizer.warmup_steps > 0"):
        schedule(OptimizerConfig(schedule="inverse_sqrt"), 10)
