"""Conditional flow matching as CosyVoice's ConditionalCFM: the straight path's velocity
integrates to its end, guided Euler steps as upstream's loop takes them, the masked loss
with conditions dropped per row."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.cosyvoice import flow_matching as fm


def _inputs(b=3, t=7, c=4, s=5):
    rng = np.random.default_rng(0)
    mu, cond = (rng.standard_normal((b, t, c)).astype(np.float32) for _ in range(2))
    spks = rng.standard_normal((b, s)).astype(np.float32)
    mask = (np.arange(t)[None] < np.array([7, 5, 3])[:, None]).astype(np.float32)
    return mu, mask, spks, cond


@pytest.mark.parametrize("scheduler", ["cosine", "linear"])
def test_the_straight_paths_velocity_lands_on_its_end(scheduler):
    # For a target mu, v(x, t) = (mu - (1 - sigma) x) / (1 - (1 - sigma) t) is constant along
    # each straight path, so Euler steps of any size end at mu + sigma z.
    cfg = fm.CFMConfig(t_scheduler=scheduler, inference_cfg_rate=0.0, n_timesteps=4, sigma_min=1e-4)
    mu, mask, spks, cond = _inputs()

    def estimator(x, mask, mu, t, spks, cond):
        return (mu - (1 - cfg.sigma_min) * x) / (1 - (1 - cfg.sigma_min) * t[:, None, None])

    z = jax.random.normal(jax.random.key(0), mu.shape)
    out = jax.jit(lambda z: fm.solve_euler(estimator, z, mask, mu, spks, cond, cfg))(z)
    np.testing.assert_allclose(out, mu + cfg.sigma_min * z, atol=1e-4)


def test_sampling_from_a_later_start_enters_the_path_at_mu():
    # Started at t0 from (1 - (1 - sigma) t0) z + t0 mu, the path's point for the target mu, the
    # same velocity lands on mu + sigma z from fewer, later steps; an estimator that returns
    # zero leaves the entry point, whose noise is scaled down by 1 - (1 - sigma) t0.
    cfg = fm.CFMConfig(inference_cfg_rate=0.0, n_timesteps=3, sigma_min=1e-4)
    mu, mask, spks, cond = _inputs()

    def estimator(x, mask, mu, t, spks, cond):
        return (mu - (1 - cfg.sigma_min) * x) / (1 - (1 - cfg.sigma_min) * t[:, None, None])

    rng = jax.random.key(1)
    z = jax.random.normal(rng, mu.shape) * 0.5
    out = fm.sample(estimator, rng, mu, mask, spks, cond, cfg, temperature=0.5, start_time=0.6)
    np.testing.assert_allclose(out, mu + cfg.sigma_min * z, atol=1e-4)
    still = fm.sample(lambda x, *_: 0 * x, rng, mu, mask, spks, cond, cfg, temperature=0.5, start_time=0.6)
    np.testing.assert_allclose(still, (1 - (1 - cfg.sigma_min) * 0.6) * z + 0.6 * mu, atol=1e-6)


def test_sampling_times_follow_the_scheduler():
    """The cosine scheduler's times are 1 - cos(pi/2 s) of the linear one's s; another is an error."""
    s = fm.time_span(fm.CFMConfig(t_scheduler="linear", n_timesteps=4))
    np.testing.assert_allclose(s, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(fm.time_span(fm.CFMConfig(n_timesteps=4)), 1 - np.cos(s * np.pi / 2), atol=1e-7)
    np.testing.assert_allclose(fm.time_span(fm.CFMConfig(t_scheduler="linear", n_timesteps=4), 0.6), 0.6 + 0.4 * s)
    with pytest.raises(ValueError, match="t_scheduler 'sigmoid'; valid: cosine, linear"):
        fm.time_span(fm.CFMConfig(t_scheduler="sigmoid"))
    with pytest.raises(ValueError, match=r"start_time 1.0: the path's time to start at, in \[0, 1\)"):
        fm.time_span(fm.CFMConfig(), 1.0)


def test_guided_euler_steps_as_upstreams_loop():
    cfg = fm.CFMConfig(n_timesteps=5)
    mu, mask, spks, cond = _inputs()

    def estimator(x, mask, mu, t, spks, cond):
        return -0.5 * x + mu * mask[..., None] + jnp.mean(spks, -1)[:, None, None] + t[:, None, None] * cond

    z = np.random.default_rng(1).standard_normal(mu.shape).astype(np.float32)
    got = fm.solve_euler(estimator, z, mask, mu, spks, cond, cfg)
    # ConditionalCFM.solve_euler, step by step.
    t_span = 1 - np.cos(np.linspace(0, 1, 6) * 0.5 * np.pi)
    x, t, dt = z, t_span[0], t_span[1] - t_span[0]
    for step in range(1, 6):
        tt = np.full(3, t, np.float32)
        v = np.asarray(estimator(x, mask, mu, tt, spks, cond))
        v_free = np.asarray(estimator(x, mask, 0 * mu, tt, 0 * spks, 0 * cond))
        x = x + dt * (1.7 * v - 0.7 * v_free)
        t = t + dt
        if step < 5:
            dt = t_span[step + 1] - t
    np.testing.assert_allclose(got, x, rtol=1e-5, atol=1e-5)


def test_loss_regresses_the_velocity_over_the_mask_without_dropped_conditions():
    cfg = fm.CFMConfig(training_cfg_rate=0.5)
    mu, mask, spks, cond = _inputs()
    x1 = np.random.default_rng(2).standard_normal(mu.shape).astype(np.float32)
    rng = jax.random.key(3)
    t, y, u, keep = fm.training_targets(rng, x1, cfg)
    np.testing.assert_allclose(
        y, (1 - (1 - 1e-6) * t[:, None, None]) * (x1 - u) / (1 - 1e-6) + t[:, None, None] * x1, rtol=1e-4, atol=1e-5
    )
    loss = fm.cfm_loss(lambda x, m, mu, t, s, c: mu, rng, x1, mask, mu, spks, cond, cfg)
    expected = np.sum(np.square((mu * keep[:, None, None] - u) * mask[..., None])) / (mask.sum() * 4)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert 0 < keep.sum() < 3  # this key drops some rows' conditions and keeps others'
