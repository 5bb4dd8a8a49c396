"""Gaussian diffusion (schedules, respacing, hybrid loss, DDPM/DDIM sampling), as DiT's upstream."""

from jaxmodels.diffusion.gaussian import GaussianDiffusion
from jaxmodels.diffusion.schedule import Schedule, make_schedule, space_timesteps


def create_diffusion(
    timestep_respacing: str = "", noise_schedule: str = "linear", learn_sigma: bool = True, diffusion_steps: int = 1000
) -> GaussianDiffusion:
    """upstream's create_diffusion (epsilon prediction, MSE loss, learned-range or fixed-large variance)."""
    return GaussianDiffusion(make_schedule(timestep_respacing, noise_schedule, diffusion_steps), learn_sigma)


__all__ = ["GaussianDiffusion", "Schedule", "create_diffusion", "make_schedule", "space_timesteps"]
