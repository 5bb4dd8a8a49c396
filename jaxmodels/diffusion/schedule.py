"""Noise schedules and timestep respacing, in float64 numpy as upstream computes them.

Upstream is facebookresearch/DiT `diffusion/` (from OpenAI's improved/guided
diffusion). A respaced schedule keeps a subset of the original steps, recomputes its
betas as 1 - abar_i / abar_prev, and calls the model with the original timestep
(`timestep_map`).
"""

import dataclasses
import math

import numpy as np


def linear_betas(num_steps: int) -> np.ndarray:
    """Ho et al.'s linear schedule, 1e-4 to 0.02 at 1000 steps (scaled for other lengths)."""
    scale = 1000 / num_steps
    return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule ("squaredcos_cap_v2")."""

    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array(
        [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)]
    )


def space_timesteps(num_steps: int, spec: str) -> list[int]:
    """The steps a respacing spec keeps: "" (all), "250", "10,15,20" (per section), "ddim50"."""
    if spec in ("", None):
        return list(range(num_steps))
    if spec.startswith("ddim"):
        want = int(spec[len("ddim") :])
        for stride in range(1, num_steps):
            if len(range(0, num_steps, stride)) == want:
                return list(range(0, num_steps, stride))
        raise ValueError(f"cannot take exactly {want} of {num_steps} steps with an integer stride")
    try:
        counts = [int(c) for c in spec.split(",")]
    except ValueError:
        raise ValueError(f"timestep respacing {spec!r}: expected '', 'N', 'N1,N2,...' or 'ddimN'") from None
    size_per, extra = divmod(num_steps, len(counts))
    start, steps = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            steps.append(start + round(position))  # Python's round: halves to even, as upstream
            position += stride
        start += size
    return sorted(set(steps))


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Every per-step array of a (respaced) diffusion, float64, indexed by the respaced step."""

    betas: np.ndarray
    timestep_map: np.ndarray  # respaced index -> original timestep, what the model sees

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    def __post_init__(self):
        if not ((self.betas > 0) & (self.betas <= 1)).all():
            raise ValueError("betas must lie in (0, 1]")

    @property
    def alphas_cumprod(self):
        return np.cumprod(1.0 - self.betas)

    @property
    def alphas_cumprod_prev(self):
        return np.append(1.0, self.alphas_cumprod[:-1])

    @property
    def alphas_cumprod_next(self):
        return np.append(self.alphas_cumprod[1:], 0.0)

    @property
    def sqrt_alphas_cumprod(self):
        return np.sqrt(self.alphas_cumprod)

    @property
    def sqrt_one_minus_alphas_cumprod(self):
        return np.sqrt(1.0 - self.alphas_cumprod)

    @property
    def log_one_minus_alphas_cumprod(self):
        return np.log(1.0 - self.alphas_cumprod)

    @property
    def sqrt_recip_alphas_cumprod(self):
        return np.sqrt(1.0 / self.alphas_cumprod)

    @property
    def sqrt_recipm1_alphas_cumprod(self):
        return np.sqrt(1.0 / self.alphas_cumprod - 1)

    @property
    def posterior_variance(self):
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_log_variance_clipped(self):
        # The variance at step 0 is 0; its log is replaced by the one at step 1.
        v = self.posterior_variance
        return np.log(np.append(v[1], v[1:])) if len(v) > 1 else np.array([])

    @property
    def posterior_mean_coef1(self):
        return self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_mean_coef2(self):
        return (1.0 - self.alphas_cumprod_prev) * np.sqrt(1.0 - self.betas) / (1.0 - self.alphas_cumprod)

    @property
    def fixed_large_variance(self):
        return np.append(self.posterior_variance[1], self.betas[1:])


def make_schedule(respacing: str = "", noise_schedule: str = "linear", num_steps: int = 1000) -> Schedule:
    """upstream's create_diffusion(timestep_respacing, noise_schedule, diffusion_steps) schedule."""
    if noise_schedule == "linear":
        betas = linear_betas(num_steps)
    elif noise_schedule in ("cosine", "squaredcos_cap_v2"):
        betas = cosine_betas(num_steps)
    else:
        raise ValueError(f"unknown noise schedule {noise_schedule!r}; valid: linear, cosine")
    keep = set(space_timesteps(num_steps, respacing))
    alphas_cumprod = np.cumprod(1.0 - betas)
    new_betas, timestep_map, last = [], [], 1.0
    for i, abar in enumerate(alphas_cumprod):
        if i in keep:
            new_betas.append(1 - abar / last)
            last = abar
            timestep_map.append(i)
    return Schedule(np.array(new_betas), np.array(timestep_map, dtype=np.int64))
