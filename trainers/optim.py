"""Optimizer and learning-rate schedule from config (optax)."""

import jax
import jax.numpy as jnp
import optax

from trainers.config import OptimizerConfig


def schedule(cfg: OptimizerConfig, total_steps: int):
    """Linear warmup from warmup_init_lr to lr, then cosine/linear decay to min_lr, or constant;
    or inverse_sqrt: ESPnet's WarmupLR (CosyVoice's warmuplr), lr * min(n / warmup, sqrt(warmup / n))
    at the n-th step counted from 1."""
    warm = max(cfg.warmup_steps, 0)
    if cfg.schedule == "inverse_sqrt":
        if warm == 0:
            raise ValueError("optimizer.schedule inverse_sqrt needs optimizer.warmup_steps > 0")
        return lambda step: cfg.lr * jnp.minimum((step + 1) / warm, jnp.sqrt(warm / (step + 1)))
    rest = max(total_steps - warm, 1)
    if cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(cfg.lr, rest, alpha=cfg.min_lr / cfg.lr if cfg.lr else 0.0)
    elif cfg.schedule == "linear":
        main = optax.linear_schedule(cfg.lr, cfg.min_lr, rest)
    else:
        main = optax.constant_schedule(cfg.lr)
    if warm == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(cfg.warmup_init_lr, cfg.lr, warm), main], [warm])


def decay_mask(params):
    """Weight decay on matrices and kernels only: never on norms' scales or biases (timm's rule)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(cfg: OptimizerConfig, total_steps: int):
    lr = schedule(cfg, total_steps)
    if cfg.name == "adamw":
        opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask)
    elif cfg.name == "adam":
        opt = optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    else:
        opt = optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
        if cfg.weight_decay:
            opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask), opt)
    if cfg.clip_grad_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.clip_grad_norm), opt)
    return opt, lr
