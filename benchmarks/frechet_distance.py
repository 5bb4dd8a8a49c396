"""The Frechet distance of two 2048-dimensional Gaussians (FID's last step):
jaxmodels.inception.frechet_distance (two symmetric eigendecompositions) against the
reference's method, scipy.linalg.sqrtm of the covariances' product (pytorch-fid's
calculate_frechet_distance and ADM's FIDStatistics.frechet_distance), on the statistics
of random features.

    python benchmarks/frechet_distance.py [--samples 5000 --dims 2048]
"""

import argparse
import time

import numpy as np
from scipy import linalg

from jaxmodels import inception


def sqrtm_distance(mu1, sigma1, mu2, sigma2):
    """The reference's formula: the real part of sqrtm(sigma1 sigma2)'s trace."""
    diff = mu1 - mu2
    return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(linalg.sqrtm(sigma1 @ sigma2).real)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--dims", type=int, default=2048)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((args.samples, args.dims))
    b = rng.standard_normal((args.samples, args.dims)) * 1.1 + 0.05
    stats = (*inception.statistics(a), *inception.statistics(b))
    times = {}
    for name, fn in (("sqrtm", sqrtm_distance), ("eigh", inception.frechet_distance)):
        start = time.perf_counter()
        value = fn(*stats)
        times[name] = time.perf_counter() - start
        print(f"{name}: {value:.10g} in {times[name]:.2f} s")
    print(f"sqrtm / eigh: {times['sqrtm'] / times['eigh']:.1f}x")


if __name__ == "__main__":
    main()
