"""Gaussian diffusion as DiT's upstream: epsilon prediction, learned-range or fixed variance,
the hybrid loss (MSE + variational bound), and DDPM / DDIM samplers as one lax.scan.

Schedules stay float64 numpy; each array is cast to float32 where it is gathered at t,
as upstream's `_extract_into_tensor`. Tensors are channels-last (N, ..., C); the model
output has C channels, or 2C with learn_sigma (eps, then the variance interpolation v).
A model function is `model_fn(x, timesteps) -> output`, called with the original
timesteps (the schedule's timestep_map), as upstream's respaced diffusion does.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.diffusion.schedule import Schedule


def _at(array: np.ndarray, t, ndim: int):
    """array[t] as float32, shaped to broadcast against an ndim-dimensional batch."""
    v = jnp.asarray(np.asarray(array, np.float32))[t]
    return v.reshape(v.shape + (1,) * (ndim - 1))


def mean_flat(x):
    return x.mean(axis=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x):
    return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log p(x) for data in [-1, 1] quantised to 256 levels (bins of +-1/255), in nats."""
    centered = x - means
    inv_std = jnp.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


@dataclasses.dataclass(frozen=True)
class GaussianDiffusion:
    schedule: Schedule
    learn_sigma: bool = True  # LEARNED_RANGE variance (else FIXED_LARGE)

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    def model_timesteps(self, t):
        """The original timestep the model sees for respaced index t."""
        return jnp.asarray(self.schedule.timestep_map)[t]

    def q_sample(self, x_start, t, noise):
        s, n = self.schedule, x_start.ndim
        return _at(s.sqrt_alphas_cumprod, t, n) * x_start + _at(s.sqrt_one_minus_alphas_cumprod, t, n) * noise

    def q_posterior(self, x_start, x_t, t):
        """Mean and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        s, n = self.schedule, x_t.ndim
        mean = _at(s.posterior_mean_coef1, t, n) * x_start + _at(s.posterior_mean_coef2, t, n) * x_t
        return mean, _at(s.posterior_log_variance_clipped, t, n)

    def predict_xstart(self, x_t, t, eps):
        s, n = self.schedule, x_t.ndim
        return _at(s.sqrt_recip_alphas_cumprod, t, n) * x_t - _at(s.sqrt_recipm1_alphas_cumprod, t, n) * eps

    def predict_eps(self, x_t, t, pred_xstart):
        s, n = self.schedule, x_t.ndim
        return (_at(s.sqrt_recip_alphas_cumprod, t, n) * x_t - pred_xstart) / _at(s.sqrt_recipm1_alphas_cumprod, t, n)

    def split_output(self, out, channels: int):
        if self.learn_sigma:
            if out.shape[-1] != 2 * channels:
                raise ValueError(f"learn_sigma: the model must output {2 * channels} channels, got {out.shape[-1]}")
            return out[..., :channels], out[..., channels:]
        if out.shape[-1] != channels:
            raise ValueError(f"the model must output {channels} channels, got {out.shape[-1]}")
        return out, None

    def p_mean_variance(self, out, x, t, clip_denoised: bool = False):
        """From the model output at x_t: the mean and log-variance of p(x_{t-1} | x_t), and x_0's prediction."""
        s, n = self.schedule, x.ndim
        eps, v = self.split_output(out, x.shape[-1])
        if v is None:
            log_var = _at(np.log(s.fixed_large_variance), t, n) * jnp.ones_like(x)
        else:
            frac = (v + 1) / 2  # interpolates between the two variance bounds; not clamped, as upstream
            log_var = frac * _at(np.log(s.betas), t, n) + (1 - frac) * _at(s.posterior_log_variance_clipped, t, n)
        pred_xstart = self.predict_xstart(x, t, eps)
        if clip_denoised:
            pred_xstart = jnp.clip(pred_xstart, -1, 1)
        mean, _ = self.q_posterior(pred_xstart, x, t)
        return mean, log_var, pred_xstart

    def vb_terms_bpd(self, out, x_start, x_t, t):
        """The variational-bound term in bits: KL(q || p) for t > 0, the decoder NLL at t = 0."""
        true_mean, true_log_var = self.q_posterior(x_start, x_t, t)
        mean, log_var, _ = self.p_mean_variance(out, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, mean, log_var)) / math.log(2.0)
        nll = -mean_flat(discretized_gaussian_log_likelihood(x_start, mean, 0.5 * log_var)) / math.log(2.0)
        return jnp.where(t == 0, nll, kl)

    def training_losses(self, model_fn, x_start, t, noise):
        """Per-example terms {"loss", "mse"[, "vb"]}: MSE on eps, plus the VB term for learned sigma.

        The VB term sees the predicted mean through a stop-gradient, so it only trains the
        variance (Nichol & Dhariwal's hybrid objective, as upstream).
        """
        x_t = self.q_sample(x_start, t, noise)
        out = model_fn(x_t, self.model_timesteps(t))
        eps, v = self.split_output(out, x_start.shape[-1])
        terms = {"mse": mean_flat((noise - eps) ** 2)}
        terms["loss"] = terms["mse"]
        if v is not None:
            frozen = jnp.concatenate([jax.lax.stop_gradient(eps), v], axis=-1)
            terms["vb"] = self.vb_terms_bpd(frozen, x_start, x_t, t)
            terms["loss"] = terms["mse"] + terms["vb"]
        return terms

    def sample(
        self,
        model_fn,
        x_T,
        *,
        sampler: str = "ddpm",
        eta: float = 0.0,
        key=None,
        step_noise=None,
        clip_denoised: bool = False,
        trajectory: bool = False,
    ):
        """Runs the reverse process from x_T as one lax.scan over the schedule's steps.

        sampler "ddpm" (ancestral, upstream's p_sample_loop) or "ddim" (eta, ddim_sample_loop).
        The per-step Gaussian draws come from `key` (folded with the step index) or, to
        replay a reference run, from `step_noise` (steps, *x_T.shape) in loop order.
        Returns the sample, or (sample, x after each step, x_0 prediction at each step)
        with trajectory=True.
        """
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"unknown sampler {sampler!r}; valid: ddpm, ddim")
        if (key is None) == (step_noise is None):
            raise ValueError("give exactly one of key and step_noise")
        s, n, steps = self.schedule, x_T.ndim, self.num_timesteps
        if step_noise is not None and step_noise.shape != (steps, *x_T.shape):
            raise ValueError(f"step_noise has shape {step_noise.shape}; expected {(steps, *x_T.shape)}")
        indices = jnp.arange(steps - 1, -1, -1)

        def step(x, k):
            i = indices[k]
            t = jnp.full((x.shape[0],), i)
            out = model_fn(x, self.model_timesteps(t))
            mean, log_var, pred_xstart = self.p_mean_variance(out, x, t, clip_denoised)
            noise = step_noise[k] if step_noise is not None else jax.random.normal(jax.random.fold_in(key, k), x.shape)
            nonzero = (i != 0).astype(x.dtype)
            if sampler == "ddpm":
                x = mean + nonzero * jnp.exp(0.5 * log_var) * noise
            else:
                eps = self.predict_eps(x, t, pred_xstart)
                abar, abar_prev = _at(s.alphas_cumprod, t, n), _at(s.alphas_cumprod_prev, t, n)
                sigma = eta * jnp.sqrt((1 - abar_prev) / (1 - abar)) * jnp.sqrt(1 - abar / abar_prev)
                x = pred_xstart * jnp.sqrt(abar_prev) + jnp.sqrt(1 - abar_prev - sigma**2) * eps
                x = x + nonzero * sigma * noise
            return x, ((x, pred_xstart) if trajectory else None)

        x, history = jax.lax.scan(step, x_T, jnp.arange(steps))
        return (x, *history) if trajectory else x
