"""Official DiT state_dict (upstream key names, e.g. DiT-XL-2-256x256.pt) -> Flax variables."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.dit.model import DiT
from jaxmodels.nn.state_dict import (
    assign_state_dict,
    load_state_dict,
    module_path,
    stack_layers,
    torch_to_flax_leaf,
)


def _key_map(num_heads):
    def key_map(key, value):
        path, leaf = module_path(key)
        if path == ("y_embedder", "embedding_table"):  # nn.Embedding: (classes, D) stays as it is
            return ("y_embedder", "embedding_table"), value
        if path[-1] == "qkv":  # (3D, D) -> (D, 3, heads, head_dim); bias (3D,) -> (3, heads, head_dim)
            shape = (3, num_heads, value.shape[0] // (3 * num_heads))
            if leaf == "weight":
                return path + ("kernel",), value.T.reshape(value.shape[1], *shape)
            return path + ("bias",), value.reshape(shape)
        if path[-2:] == ("attn", "proj") and leaf == "weight":  # (D, D) -> (heads, head_dim, D)
            return path + ("kernel",), value.T.reshape(num_heads, -1, value.shape[0])
        name, value = torch_to_flax_leaf(leaf, value)
        return path + (name,), value

    return key_map


def infer_config(state_dict) -> dict:
    """DiT's constructor arguments from an upstream state_dict (num_heads cannot be read off it)."""
    proj = state_dict["x_embedder.proj.weight"]  # (D, C, p, p)
    hidden, in_channels, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
    tokens = int(state_dict["pos_embed"].shape[1])
    out = int(state_dict["final_layer.linear.weight"].shape[0]) // patch**2
    table = int(state_dict["y_embedder.embedding_table.weight"].shape[0])
    depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
    return dict(
        input_size=int(round(tokens**0.5)) * patch,
        patch_size=patch,
        in_channels=in_channels,
        hidden_size=hidden,
        depth=depth,
        mlp_ratio=int(state_dict["blocks.0.mlp.fc1.weight"].shape[0]) / hidden,
        num_classes=table - 1,  # assumes the null-label row (class_dropout_prob > 0), as every released model
        learn_sigma=out == 2 * in_channels,
    )


def from_torch(state_dict, model: DiT | None = None, num_heads: int | None = None):
    """Converts an official DiT state_dict into ``{"params": ...}`` for ``model``.

    ``model`` fixes the expected shapes; without it the config is read off the
    state_dict, with ``num_heads`` given (it is not recorded in the weights; every
    published config has 16 heads except S, 6, and B, 12). Accepts a dict of numpy
    arrays or torch tensors, or a path to .safetensors/.pt. The stored pos_embed must
    equal the fixed sin-cos table the model computes.
    """
    if isinstance(state_dict, str):
        state_dict = load_state_dict(state_dict)
    state_dict = {
        k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in state_dict.items()
    }
    if model is None:
        if num_heads is None:
            raise ValueError("from_torch needs the model or num_heads: a DiT checkpoint does not record its heads")
        model = DiT(**infer_config(state_dict), num_heads=num_heads)
    if "pos_embed" in state_dict:
        stored = state_dict["pos_embed"].reshape(-1, model.hidden_size)
        if stored.shape != (model.num_patches, model.hidden_size) or not np.allclose(
            stored, model.pos_embed(), atol=1e-6
        ):
            raise ValueError(f"pos_embed {state_dict['pos_embed'].shape} is not the fixed sin-cos table of this DiT")
    x = jnp.zeros((1, model.input_size, model.input_size, model.in_channels))
    t, y = jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)
    shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.PRNGKey(0), x, t, y)))["params"]
    key_map = _key_map(model.num_heads)
    converted, paths, blocks = {}, {}, {}
    for key, value in state_dict.items():
        if key == "pos_embed":
            continue
        if key.startswith("blocks."):  # blocks.{i}.rest -> row i of blocks/rest
            index, _, rest = key.removeprefix("blocks.").partition(".")
            path, value = key_map(rest, value)
            blocks.setdefault(f"blocks.*.{rest}", (("blocks", *path), {}))[1][int(index)] = value
        else:
            paths[key], converted[key] = key_map(key, value)
    for key, (path, by_index) in blocks.items():
        converted[key], paths[key] = stack_layers(key, by_index, model.depth), path
    return {"params": assign_state_dict(converted, shapes, lambda key, value: (paths[key], value))}
