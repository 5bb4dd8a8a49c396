"""DiT train step and sampling loop: this project (JAX) against the official PyTorch code.

    python benchmarks/dit_train_step.py --reference DiT/ [--model DiT-XL/2 --batch 2]

--reference is a clone of facebookresearch/DiT (models.py and diffusion/). Its three
imports from timm (PatchEmbed, Attention, Mlp) are satisfied by small torch stand-ins
defined here, written as timm's (fused scaled_dot_product_attention), so torchvision
is not needed. Both sides get the same weights (the torch state_dict converted with
from_torch) and the same batch of 32x32x4 latents.

- Train step: the hybrid loss (training_losses) at random timesteps, backward, AdamW
  (lr 1e-4, no weight decay) as upstream's train.py; one jitted function in JAX.
- Sampling: DDPM with classifier-free guidance (forward_with_cfg, the batch doubled),
  --sample_steps respaced steps; upstream's p_sample_loop against our lax.scan.

--attention times the JAX train step with each attention listed (auto: cuDNN's fused
attention on GPUs in 16 bits, checked there against XLA's first); sampling uses the
first. The torch side runs first and is freed before the JAX side starts (DiT-XL/2 with AdamW
needs about 11 GB per framework). Prints times, the ratios (torch / jax: above 1 means
JAX is faster) and, on an accelerator, images/s, FLOP/s and MFU.
"""

import argparse
import ctypes
import functools
import gc
import itertools
import os
import sys
import types

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import device_time_by_op, peak_flops, time_it  # noqa: E402


def install_timm_stand_ins():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class PatchEmbed(nn.Module):
        def __init__(self, img_size, patch_size, in_chans, embed_dim, bias=True):
            super().__init__()
            self.patch_size = (patch_size, patch_size)
            self.num_patches = (img_size // patch_size) ** 2
            self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, bias=bias)

        def forward(self, x):
            return self.proj(x).flatten(2).transpose(1, 2)

    class Attention(nn.Module):
        def __init__(self, dim, num_heads=8, qkv_bias=False):
            super().__init__()
            self.num_heads = num_heads
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            b, n, c = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
            x = F.scaled_dot_product_attention(q, k, v)
            return self.proj(x.transpose(1, 2).reshape(b, n, c))

    class Mlp(nn.Module):
        def __init__(self, in_features, hidden_features, act_layer=nn.GELU, drop=0.0):
            super().__init__()
            self.fc1, self.act, self.fc2 = (
                nn.Linear(in_features, hidden_features),
                act_layer(),
                nn.Linear(hidden_features, in_features),
            )

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    vit = types.ModuleType("timm.models.vision_transformer")
    vit.PatchEmbed, vit.Attention, vit.Mlp = PatchEmbed, Attention, Mlp
    sys.modules.update(
        {
            "timm": types.ModuleType("timm"),
            "timm.models": types.ModuleType("timm.models"),
            "timm.models.vision_transformer": vit,
        }
    )
    return torch


def run_torch(args, x, y, t, noise, z):
    """Upstream's train step and p_sample_loop timed; returns their times and the initial weights."""
    import torch
    from diffusion import create_diffusion as torch_diffusion
    from models import DiT_models

    n = args.batch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # As upstream's train.py: float32 matmuls may use TF32 on a GPU (XLA's default precision does too).
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    ref = DiT_models[args.model](input_size=32, num_classes=1000).to(device)
    state_dict = {k: v.detach().cpu().numpy() for k, v in ref.state_dict().items()}
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-4, weight_decay=0)
    diffusion = torch_diffusion("")
    xt, yt, tt, nt = (
        torch.from_numpy(a).to(device)
        for a in (x.transpose(0, 3, 1, 2).copy(), y, t, noise.transpose(0, 3, 1, 2).copy())
    )

    def torch_step():
        with autocast:
            loss = diffusion.training_losses(ref, xt, tt, dict(y=yt), noise=nt)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    ref.train()
    t_torch = time_it(torch_step, args.iters)
    ref.eval()
    sampling = torch_diffusion(str(args.sample_steps))
    zt = torch.from_numpy(np.concatenate([z, z]).transpose(0, 3, 1, 2).copy()).to(device)
    y_cfg = torch.from_numpy(np.concatenate([y, np.full(n, 1000)])).to(device)

    def torch_sample():
        with torch.no_grad(), autocast:
            sampling.p_sample_loop(
                ref.forward_with_cfg,
                zt.shape,
                zt,
                clip_denoised=False,
                model_kwargs=dict(y=y_cfg, cfg_scale=args.cfg_scale),
                device=device,
            )
        if device == "cuda":
            torch.cuda.synchronize()

    s_torch = time_it(torch_sample, 1, warmup=1)
    threads = torch.get_num_threads()
    return t_torch, s_torch, state_dict, threads


def check_fused_attention():
    """cuDNN's fused attention against XLA's on DiT-XL/2's head shape: outputs and gradients."""
    import jax
    import jax.numpy as jnp

    from jaxmodels.nn.attention import dot_product_attention

    q, k, v, g = (jax.random.normal(jax.random.PRNGKey(i), (32, 256, 16, 72), jnp.bfloat16) for i in range(4))

    def run(implementation):
        out, vjp = jax.vjp(lambda *a: dot_product_attention(*a, implementation), q, k, v)
        return [out, *vjp(g)]

    errors = [
        float(jnp.linalg.norm((a - b).astype(jnp.float32)) / jnp.linalg.norm(b.astype(jnp.float32)))
        for a, b in zip(run("cudnn"), run("xla"), strict=True)
    ]
    print("attention cudnn against xla, relative error of out, dq, dk, dv: " + " ".join(f"{e:.1e}" for e in errors))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="a clone of facebookresearch/DiT")
    parser.add_argument("--model", default="DiT-XL/2")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--sample_steps", type=int, default=5)
    parser.add_argument("--cfg_scale", type=float, default=4.0)
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="compute dtype (params stay float32): torch autocast, the JAX model's dtype",
    )
    parser.add_argument(
        "--attention",
        default="auto",
        help="the JAX attention: auto (cuDNN's fused attention on GPUs in 16 bits), xla, cudnn, or several "
        "separated by commas, each timed",
    )
    parser.add_argument(
        "--unroll",
        default="",
        help="blocks per loop iteration to time (0: all), comma-separated (default: the model's)",
    )
    parser.add_argument("--profile", action="store_true", help="list the train step's costliest device ops")
    args = parser.parse_args()

    install_timm_stand_ins()
    sys.path.insert(0, args.reference)

    rng = np.random.default_rng(0)
    n = args.batch
    x = rng.standard_normal((n, 32, 32, 4)).astype(np.float32)
    y = rng.integers(0, 1000, n)
    t = rng.integers(0, 1000, n)
    noise = rng.standard_normal(x.shape).astype(np.float32)
    z = rng.standard_normal((n, 32, 32, 4)).astype(np.float32)

    # The torch side first; its models and optimizer are freed when run_torch returns.
    t_torch, s_torch, state_dict, threads = run_torch(args, x, y, t, noise, z)
    gc.collect()
    if sys.platform == "linux":  # hand the freed heap back before JAX allocates its copy
        ctypes.CDLL("libc.so.6").malloc_trim(0)

    # JAX.
    import jax
    import jax.numpy as jnp
    import optax

    from jaxmodels.diffusion import create_diffusion
    from jaxmodels.dit import DiT, create, forward_macs, from_torch
    from jaxmodels.dit import model as dit_model

    def jitted_step(model):
        def loss_fn(p, x, y, t, noise, key):
            def model_fn(x_t, ts):
                return model.apply({"params": p}, x_t, ts, y, train=True, rngs={"dropout": key})

            return jdiff.training_losses(model_fn, x, t, noise)["loss"].mean()

        # The state is donated: DiT-XL/2's params and AdamW moments are 8 GB in float32.
        @functools.partial(jax.jit, donate_argnums=(0, 1))
        def step(p, opt_state, x, y, t, noise, key):
            loss, grads = jax.value_and_grad(loss_fn)(p, x, y, t, noise, key)
            updates, opt_state = tx.update(grads, opt_state, p)
            return optax.apply_updates(p, updates), opt_state, loss

        return step

    implementations = args.attention.split(",")
    if jax.default_backend() == "gpu":
        check_fused_attention()
    base = create(args.model, input_size=32, num_classes=1000, dtype=jnp.dtype(args.dtype))
    models = {a: base.clone(attention=None if a == "auto" else a) for a in implementations}
    model = models[implementations[0]]
    params = from_torch(state_dict, model)["params"]
    del state_dict
    tx = optax.adamw(1e-4, weight_decay=0.0)
    jdiff = create_diffusion("")
    state = [params, tx.init(params)]
    batch = [jnp.asarray(a) for a in (x, y, t, noise)]
    key = jax.random.PRNGKey(0)

    default_unroll = dict(dit_model.BLOCK_UNROLL)
    unrolls = [int(u) for u in args.unroll.split(",")] if args.unroll else [None]
    t_steps = {}
    for (implementation, m), unroll in itertools.product(models.items(), unrolls):
        if unroll is not None:
            dit_model.BLOCK_UNROLL = {jax.default_backend(): unroll}  # read when the step is traced
            implementation = f"{implementation}, unroll {unroll}"
        compiled_step = jitted_step(m).lower(state[0], state[1], *batch, key).compile()
        dit_model.BLOCK_UNROLL = default_unroll

        def jax_step():
            state[0], state[1], loss = compiled_step(state[0], state[1], *batch, key)
            jax.block_until_ready(loss)

        t_steps[implementation] = time_it(jax_step, args.iters)
        if args.profile:
            print(f"{args.model} train step, attention {implementation}:")
            device_time_by_op(jax_step)
    jsampling = create_diffusion(str(args.sample_steps))
    y_cfg = jnp.concatenate([jnp.asarray(y), jnp.full((n,), 1000)])

    @jax.jit
    def sample(p, x_T, key):
        def model_fn(x, ts):
            return model.apply({"params": p}, x, ts, y_cfg, args.cfg_scale, method=DiT.forward_with_cfg)

        return jsampling.sample(model_fn, x_T, key=key)

    z2 = jnp.asarray(np.concatenate([z, z]))
    s_jax = time_it(lambda: jax.block_until_ready(sample(state[0], z2, key)), 1, warmup=1)

    dev = jax.devices()[0]
    macs = forward_macs(model)
    print(f"device: {dev.device_kind} ({dev.platform}), torch threads {threads}")
    print(f"{args.model} train step (hybrid loss, backward, AdamW), batch {n}, 32x32x4 latents, {args.dtype}")
    peak = peak_flops(dev)
    for implementation, t_jax in t_steps.items():
        achieved = 6 * macs * n / t_jax  # the model's FLOPs: 3 x 2 x forward MACs per image
        mfu = f", MFU {achieved / peak:.1%}" if peak else ""
        print(
            f"  jax   {t_jax * 1e3:10.1f} ms/step  {n / t_jax:8.2f} images/s  ratio torch/jax {t_torch / t_jax:.2f}x  "
            f"(attention {implementation}; {achieved / 1e12:.2f} TFLOP/s{mfu})"
        )
    print(f"  torch {t_torch * 1e3:10.1f} ms/step  {n / t_torch:8.2f} images/s")
    print(f"DDPM sampling, {args.sample_steps} steps, guidance {args.cfg_scale} (batch {n} doubled)")
    print(f"  jax   {s_jax:8.2f} s  ({s_jax / args.sample_steps * 1e3:.1f} ms/step)")
    print(f"  torch {s_torch:8.2f} s  ({s_torch / args.sample_steps * 1e3:.1f} ms/step)")
    print(f"  ratio torch/jax: {s_torch / s_jax:.2f}x")


if __name__ == "__main__":
    main()
