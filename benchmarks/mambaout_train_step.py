"""MambaOut forward+backward at 224x224: this project (JAX) against the official PyTorch model.

    python benchmarks/mambaout_train_step.py --reference MambaOut/models/mambaout.py [--variant mambaout_tiny]

--reference is upstream's models/mambaout.py from a clone of yuweihao/MambaOut. Its
imports from timm are satisfied by small stand-ins defined here (trunc_normal_,
DropPath, register_model, the ImageNet mean/std), so torchvision is not needed. Both
models get the same weights (the torch state_dict converted with from_torch) and the
same batch; each is timed over --iters steps of loss + gradients after warm-up, in one
process. Prints the step times and their ratio (torch / jax: above 1 means JAX is
faster), images/s, FLOP/s and MFU, and the bytes the step moves through device memory
per second (the figure of merit for this memory-bound model). --blocks also times one Gated
CNN block's forward + backward alone at each stage's shape, both implementations, and their
sum over the variant's blocks: where the two differ inside the step.
"""

import argparse
import importlib.util
import os
import sys
import types

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import device_time_by_op, report_bandwidth, report_flops, time_it  # noqa: E402


def load_reference(path):
    import torch

    timm = types.ModuleType("timm")
    layers = types.ModuleType("timm.models.layers")
    layers.trunc_normal_ = torch.nn.init.trunc_normal_

    class DropPath(torch.nn.Module):
        def __init__(self, p=0.0):
            super().__init__()
            self.p = p

        def forward(self, x):
            if not self.training or self.p == 0.0:
                return x
            keep = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device) >= self.p
            return x * keep / (1 - self.p)

    layers.DropPath = DropPath
    registry = types.ModuleType("timm.models.registry")
    registry.register_model = lambda f: f
    data = types.ModuleType("timm.data")
    data.IMAGENET_DEFAULT_MEAN, data.IMAGENET_DEFAULT_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    models = types.ModuleType("timm.models")
    sys.modules.update(
        {
            "timm": timm,
            "timm.models": models,
            "timm.models.layers": layers,
            "timm.models.registry": registry,
            "timm.data": data,
        }
    )
    spec = importlib.util.spec_from_file_location("mambaout_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="upstream models/mambaout.py")
    parser.add_argument("--variant", default="mambaout_tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--profile", action="store_true", help="list the JAX step's costliest device ops")
    parser.add_argument("--blocks", action="store_true", help="also time one block per stage, JAX against torch")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import optax
    import torch

    from jaxmodels.mambaout import create, from_torch

    reference = load_reference(args.reference)
    ref = getattr(reference, args.variant)()
    ref.train()
    torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    ref = ref.to(torch_device)
    model = create(args.variant, dtype=jnp.dtype(args.dtype))
    variables = from_torch({k: v.detach().cpu().numpy() for k, v in ref.state_dict().items()}, model)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 224, 224, 3)).astype(np.float32)
    y = rng.integers(0, 1000, args.batch)

    # PyTorch: one forward + backward of the cross-entropy, gradients zeroed each step.
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(torch_device)
    yt = torch.from_numpy(y).to(torch_device)
    autocast = torch.autocast(torch_device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def torch_step():
        ref.zero_grad(set_to_none=True)
        with autocast:
            loss = torch.nn.functional.cross_entropy(ref(xt), yt)
        loss.backward()
        if torch_device == "cuda":
            torch.cuda.synchronize()

    # JAX: the same, jitted.
    def loss_fn(params, images, labels):
        logits = model.apply({"params": params}, images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    params = jax.device_put(variables["params"])  # on the device once, not copied in at every step
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    lowered = jax.jit(jax.value_and_grad(loss_fn)).lower(params, xj, yj)
    grad_fn = lowered.compile()

    def jax_step():
        jax.block_until_ready(grad_fn(params, xj, yj))

    t_jax = time_it(jax_step, args.iters)
    t_torch = time_it(torch_step, args.iters)
    device = jax.devices()[0]
    print(
        f"device: {device.device_kind} ({device.platform}), torch on {torch_device}, threads {torch.get_num_threads()}"
    )
    print(f"{args.variant} fwd+bwd, batch {args.batch} at 224x224, {args.dtype}")
    print(f"  jax   {t_jax * 1e3:9.1f} ms/step  {args.batch / t_jax:8.1f} images/s")
    print(f"  torch {t_torch * 1e3:9.1f} ms/step  {args.batch / t_torch:8.1f} images/s")
    print(f"  ratio torch/jax: {t_torch / t_jax:.2f}x")
    report_flops(lowered, t_jax, device)
    report_bandwidth(grad_fn, t_jax)
    if args.profile:
        device_time_by_op(jax_step)
    if args.blocks:
        time_blocks(reference, model, args.batch, args.iters, torch_device, autocast)


def time_blocks(reference, model, batch, iters, torch_device, autocast):
    """One Gated CNN block's forward + backward (input and parameter gradients of a sum of
    squares) per stage, at the stage's feature-map shape for 224x224 images."""
    import jax
    import jax.numpy as jnp
    import torch

    from jaxmodels.mambaout.model import GatedCNNBlock

    totals = np.zeros(2)
    for stage, (depth, dim) in enumerate(zip(model.depths, model.dims)):
        side = 224 // 2 ** (stage + 2)
        x = np.random.default_rng(stage).standard_normal((batch, side, side, dim)).astype(np.float32)
        theirs = reference.GatedCNNBlock(dim, kernel_size=model.kernel_size, conv_ratio=model.conv_ratio)
        theirs = theirs.to(torch_device)
        xt = torch.from_numpy(x).to(torch_device).requires_grad_()

        def torch_block():
            theirs.zero_grad(set_to_none=True)
            xt.grad = None
            with autocast:
                out = theirs(xt)
            out.float().square().sum().backward()
            if torch_device == "cuda":
                torch.cuda.synchronize()

        ours = GatedCNNBlock(dim, kernel_size=model.kernel_size, conv_ratio=model.conv_ratio, dtype=model.dtype)
        params = ours.init(jax.random.PRNGKey(0), x)["params"]
        grads = jax.jit(
            jax.grad(lambda p, x: jnp.square(ours.apply({"params": p}, x).astype(jnp.float32)).sum(), argnums=(0, 1))
        )
        xj = jnp.asarray(x)
        t = np.array([time_it(lambda: jax.block_until_ready(grads(params, xj)), iters), time_it(torch_block, iters)])
        totals += depth * t
        print(f"  block {x.shape}: jax {t[0] * 1e3:7.1f} ms  torch {t[1] * 1e3:7.1f} ms  torch/jax {t[1] / t[0]:.2f}x")
    print(
        f"  all {sum(model.depths)} blocks: jax {totals[0] * 1e3:.0f} ms  torch {totals[1] * 1e3:.0f} ms"
        f"  torch/jax {totals[1] / totals[0]:.2f}x"
    )


if __name__ == "__main__":
    main()
