"""Conditional flow matching as CosyVoice's decoder trains and samples it (cosyvoice/flow/
flow_matching.py ConditionalCFM, after Matcha-TTS; Lipman et al. 2023 with optimal-transport
paths), channels-last and for any estimator.

The estimator is a function ``(x, mask, mu, t, spks, cond) -> velocity`` with x, mu, cond
(B, T, C), mask (B, T), t (B,), spks (B, S). Training draws t ~ U(0, 1) and noise z, puts the
sample on the straight path y = (1 - (1 - sigma_min) t) z + t x1 and regresses the
estimator onto its velocity u = x1 - (1 - sigma_min) z over the mask's frames, dropping the
conditions (mu, spks, cond) of a training_cfg_rate share of rows. Sampling integrates the
ODE from z with Euler steps at times 1 - cos(pi/2 s), s uniform (the cosine schedule), in
one lax.scan, each step guided: (1 + w) v(conditions) - w v(no conditions), w the
inference_cfg_rate.

Sampling may start later on the path (``start_time`` t0 > 0, DiffSinger's shallow diffusion,
Liu et al. 2022, on the flow's straight path): at y0 = (1 - (1 - sigma_min) t0) z + t0 mu,
mu standing in for the target, with the Euler steps' times mapped onto [t0, 1]. That needs a
mu trained to predict the target (Matcha-TTS's prior loss); CosyVoice's starts at 0.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class CFMConfig:
    """cfm_params of CosyVoice's flow decoders (cosyvoice/flow/flow.py)."""

    sigma_min: float = 1e-6
    t_scheduler: str = "cosine"  # or "linear": the sampling times
    training_cfg_rate: float = 0.2
    inference_cfg_rate: float = 0.7
    n_timesteps: int = 10


def training_targets(rng, x1, cfg: CFMConfig):
    """(t (B,), noisy sample y, target velocity u, keep (B,): 1 where the row keeps its conditions)."""
    k_t, k_z, k_keep = jax.random.split(rng, 3)
    t = jax.random.uniform(k_t, (x1.shape[0],))
    z = jax.random.normal(k_z, x1.shape, x1.dtype)
    s = t[:, None, None]
    y = (1 - (1 - cfg.sigma_min) * s) * z + s * x1
    u = x1 - (1 - cfg.sigma_min) * z
    keep = (jax.random.uniform(k_keep, (x1.shape[0],)) > cfg.training_cfg_rate).astype(x1.dtype)
    return t, y, u, keep


def cfm_errors(estimator, rng, x1, mask, mu, spks, cond, cfg: CFMConfig):
    """Per row (B,): the summed squared error of the estimated velocity over the mask's frames."""
    t, y, u, keep = training_targets(rng, x1, cfg)
    pred = estimator(y, mask, mu * keep[:, None, None], t, spks * keep[:, None], cond * keep[:, None, None])
    return jnp.sum(jnp.square((pred - u) * mask[..., None].astype(jnp.float32)), axis=(1, 2))


def cfm_loss(estimator, rng, x1, mask, mu, spks, cond, cfg: CFMConfig):
    """ConditionalCFM.compute_loss: cfm_errors summed and divided by (frames x channels) of the batch."""
    errors = cfm_errors(estimator, rng, x1, mask, mu, spks, cond, cfg)
    return jnp.sum(errors) / (jnp.sum(mask.astype(jnp.float32)) * x1.shape[-1])


def time_span(cfg: CFMConfig, start_time: float = 0.0) -> np.ndarray:
    """The n_timesteps + 1 integration times from start_time to 1: the scheduler's times from 0
    to 1 mapped linearly onto [start_time, 1]."""
    if not 0 <= start_time < 1:
        raise ValueError(f"start_time {start_time}: the path's time to start at, in [0, 1)")
    s = np.linspace(0, 1, cfg.n_timesteps + 1, dtype=np.float32)
    if cfg.t_scheduler == "cosine":
        s = 1 - np.cos(s * 0.5 * np.pi)
    elif cfg.t_scheduler != "linear":
        raise ValueError(f"t_scheduler {cfg.t_scheduler!r}; valid: cosine, linear")
    return (start_time + (1 - start_time) * s).astype(np.float32)


def solve_euler(estimator, z, mask, mu, spks, cond, cfg: CFMConfig, start_time: float = 0.0):
    """ConditionalCFM.solve_euler from z at start_time: Euler steps over time_span, each guided
    by the velocity without conditions (both estimates in one vmapped call)."""
    times = jnp.asarray(time_span(cfg, start_time))
    w = cfg.inference_cfg_rate
    both = lambda a: jnp.stack([a, jnp.zeros_like(a)])  # noqa: E731  conditions, then none
    mu2, spks2, cond2 = both(mu), both(spks), both(cond)
    guided = jax.vmap(estimator)

    def step(x, span):
        t, dt = span
        tt = jnp.full((2, x.shape[0]), t, x.dtype)
        v, v_free = guided(jnp.stack([x, x]), jnp.stack([mask, mask]), mu2, tt, spks2, cond2)
        return x + dt * ((1.0 + w) * v - w * v_free), None

    x, _ = jax.lax.scan(step, z, (times[:-1], jnp.diff(times)))
    return x


def sample(estimator, rng, mu, mask, spks, cond, cfg: CFMConfig, temperature: float = 1.0, start_time: float = 0.0):
    """ConditionalCFM.forward: mel frames (B, T, C) from noise of the given temperature, the
    path entered at start_time with mu as its end (the module's docstring)."""
    z = jax.random.normal(rng, mu.shape, mu.dtype) * temperature
    y = (1 - (1 - cfg.sigma_min) * start_time) * z + start_time * mu
    return solve_euler(estimator, y, mask, mu, spks, cond, cfg, start_time)
