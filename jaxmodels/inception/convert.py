"""pytorch-fid's weight file (pt_inception-2015-12-05-6726825d.pth; torchvision's key
names) -> FIDInceptionV3 variables {"params", "batch_stats"}. The classifier's bias is
left out: the Inception Score takes the logits without it, as the TF graph's users do."""

import numpy as np

from jaxmodels.nn.state_dict import assign_state_dict, module_path, torch_to_flax_leaf

_STATS = {"running_mean": "mean", "running_var": "var"}


def from_torch(state_dict: dict, model) -> dict:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 299, 299, 3))))

    def key_map(key, value):
        path, leaf = module_path(key)
        if leaf in _STATS:
            return ("batch_stats", *path, _STATS[leaf]), value
        name, value = torch_to_flax_leaf(leaf, value)
        return ("params", *path, name), value

    ignore = lambda key: key.endswith("num_batches_tracked") or key == "fc.bias"  # noqa: E731
    return jax.tree.map(np.asarray, assign_state_dict(state_dict, shapes, key_map, ignore))
