"""Official MambaOut state_dict (upstream key names) -> Flax variables."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.mambaout.model import MambaOut
from jaxmodels.nn.state_dict import assign_state_dict, load_state_dict, module_path, torch_to_flax_leaf


def _key_map(key, value):
    path, leaf = module_path(key)
    name, value = torch_to_flax_leaf(leaf, value)
    return path + (name,), value


def from_torch(state_dict, model=None):
    """Converts an official MambaOut state_dict into ``{"params": ...}`` for ``model``.

    ``model`` (a MambaOut) fixes the expected shapes; by default it is inferred from the
    state_dict (depths, dims, classes, kernel size, conv ratio). Accepts a dict of numpy
    arrays or torch tensors, or a path to .safetensors/.pth.
    """
    if isinstance(state_dict, str):
        state_dict = load_state_dict(state_dict)
    state_dict = {
        k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in state_dict.items()
    }
    if model is None:
        model = MambaOut(**infer_config(state_dict))
    dummy = jnp.zeros((1, 64, 64, model.in_chans))
    shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.PRNGKey(0), dummy)))["params"]
    return {"params": assign_state_dict(state_dict, shapes, _key_map)}


def infer_config(state_dict) -> dict:
    """Reads MambaOut's constructor arguments off an upstream state_dict."""
    stages = sorted({tuple(map(int, k.split(".")[1:3])) for k in state_dict if k.startswith("stages.")})
    num_stages = max(i for i, _ in stages) + 1
    depths = tuple(sum(1 for i, _ in stages if i == s) for s in range(num_stages))
    dims = tuple(int(state_dict[f"stages.{s}.0.norm.weight"].shape[0]) for s in range(num_stages))
    conv = state_dict["stages.0.0.conv.weight"]
    return dict(
        in_chans=int(state_dict["downsample_layers.0.conv1.weight"].shape[1]),
        num_classes=int(state_dict["head.fc2.weight"].shape[0]),
        depths=depths,
        dims=dims,
        kernel_size=int(conv.shape[-1]),
        conv_ratio=conv.shape[0] / dims[0],
    )
