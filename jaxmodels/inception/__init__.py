"""Inception-v3 features for FID, sFID, IS, precision and recall (pytorch-fid's network)."""

import numpy as np

from jaxmodels.inception.convert import from_torch
from jaxmodels.inception.metrics import inception_score, manifold_radii, precision_recall, statistics
from jaxmodels.inception.model import FIDInceptionV3
from jaxmodels.nn import variants

VARIANTS = {"fid_inception_v3": {}}


def create(name: str = "fid_inception_v3", **overrides) -> FIDInceptionV3:
    return variants.create(FIDInceptionV3, VARIANTS, name, **overrides)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """The Frechet distance of two Gaussians, as pytorch-fid's calculate_frechet_distance:
    |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), in float64, the product's
    square root by scipy's sqrtm (both offset by eps where it is singular)."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.float64(mu1)), np.atleast_1d(np.float64(mu2))
    sigma1, sigma2 = np.atleast_2d(np.float64(sigma1)), np.atleast_2d(np.float64(sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(
            f"statistics of different sizes: means {mu1.shape} and {mu2.shape}, covariances {sigma1.shape} and "
            f"{sigma2.shape}"
        )
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                f"the covariances' product has a complex square root (imaginary part {np.abs(covmean.imag).max():g})"
            )
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


__all__ = [
    "VARIANTS",
    "FIDInceptionV3",
    "create",
    "frechet_distance",
    "from_torch",
    "inception_score",
    "manifold_radii",
    "precision_recall",
    "statistics",
]
