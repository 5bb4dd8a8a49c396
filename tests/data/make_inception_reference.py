"""Makes tests/data/inception_reference.npz: pytorch-fid's FID Inception-v3 (its
InceptionV3 wrapper over torchvision's modules) with random weights, on random images;
pytorch-fid's calculate_frechet_distance on random statistics; torch-fidelity's Inception
Score and precision/recall on random logits and features.

    python -m venv /tmp/fid && /tmp/fid/bin/pip install pytorch-fid torch-fidelity
    /tmp/fid/bin/python tests/data/make_inception_reference.py

The 24M weights are not stored: `random_weights` draws them from numpy's generator
(He-normal convolutions, BatchNorm affine near the identity, a small classifier), so the
test makes the same ones. The BatchNorm running statistics are stored: one pass in
training mode over the images sets them, so activations stay near unit scale through the
network's depth.
"""

import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def random_weights(shapes: dict, seed: int = 0) -> dict:
    """torchvision-keyed weights (no running statistics) of the given shapes, by key order."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("conv.weight"):
            fan_in = int(np.prod(shape[1:]))
            out[key] = rng.normal(0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
        elif key.endswith("bn.weight"):
            out[key] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif key.endswith("bn.bias"):
            out[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:  # fc
            out[key] = (0.01 * rng.standard_normal(shape)).astype(np.float32)
    return out


def pytorch_fid_model():
    """(pytorch-fid's InceptionV3([3]), the torchvision Inception inside it), with torch's own
    initialisation where pytorch-fid would download its weights."""
    import torch
    from pytorch_fid import inception as pi

    built = {}
    original_load = torch.nn.Module.load_state_dict

    def load(self, state_dict, *args, **kwargs):
        if state_dict == "random":
            built["model"] = self
            return None
        return original_load(self, state_dict, *args, **kwargs)

    pi.load_state_dict_from_url = lambda url, progress=True: "random"
    torch.nn.Module.load_state_dict = load
    try:
        wrapper = pi.InceptionV3([3])
    finally:
        torch.nn.Module.load_state_dict = original_load
    return wrapper, built["model"]


def main():
    import torch
    from pytorch_fid import fid_score
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    wrapper, inception = pytorch_fid_model()
    shapes = {
        k: list(v.shape) for k, v in inception.state_dict().items() if "running" not in k and "num_batches" not in k
    }
    with torch.no_grad():
        for key, value in random_weights(shapes).items():
            inception.state_dict()[key].copy_(torch.from_numpy(value))
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 1, (4, 3, 37, 50)).astype(np.float32)
    for m in inception.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: this one pass's statistics
    wrapper.train()
    with torch.no_grad():
        wrapper(torch.from_numpy(images))
    wrapper.eval()

    spatial = {}
    inception.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: spatial.setdefault("x", o))
    with torch.no_grad():
        pool = wrapper(torch.from_numpy(images))[0][:, :, 0, 0]
        logits = pool @ inception.fc.weight.T
    spatial = spatial["x"].permute(0, 2, 3, 1)[..., :7].reshape(len(images), -1)
    stats = {k: v.numpy() for k, v in inception.state_dict().items() if "running" in k}

    frechet = {}
    for name, (n, d) in {"full_rank": (200, 32), "singular": (20, 64)}.items():
        a, b = rng.standard_normal((n, d)), rng.standard_normal((n, d)) * 1.5 + 0.3
        mu1, sigma1, mu2, sigma2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
        frechet[name] = [mu1, sigma1, mu2, sigma2, fid_score.calculate_frechet_distance(mu1, sigma1, mu2, sigma2)]

    # torch-fidelity's Inception Score (in order: ADM's consecutive splits) and precision/recall.
    is_logits = rng.normal(0, 3, (100, 1008))
    is_score = isc_features_to_metric(torch.from_numpy(is_logits), splits=10, shuffle=False)["inception_score_mean"]
    generated, real = rng.standard_normal((200, 16)), rng.standard_normal((150, 16)) * 1.2 + 0.2
    precision, recall = calculate_precision_recall_full(
        torch.from_numpy(generated).float(), torch.from_numpy(real).float(), neighborhood=3
    )

    np.savez(
        os.path.join(HERE, "inception_reference.npz"),
        is_logits=is_logits,
        is_score=is_score,
        pr_generated=generated,
        pr_real=real,
        pr_precision_recall=[precision, recall],
        shapes=json.dumps(shapes),
        images=images.transpose(0, 2, 3, 1),
        pool=pool.numpy(),
        logits=logits.numpy(),
        spatial=spatial.numpy(),
        torch_params=sum(p.numel() for p in inception.parameters()),
        **{f"stats/{k}": v for k, v in stats.items()},
        **{f"frechet/{name}/{i}": np.asarray(v) for name, values in frechet.items() for i, v in enumerate(values)},
    )


if __name__ == "__main__":
    main()
