"""Official EnCodec and SpeechTokenizer state_dicts (upstream key names) -> a ready Codec."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.codec.model import Codec, Encodec, EncodecConfig
from jaxmodels.nn.state_dict import assign_state_dict, module_path

_CODEBOOK = re.compile(r"quantizer\.vq\.layers\.(\d+)\._codebook\.(embed|embed_avg|cluster_size|inited)$")


def _param(key: str, value: np.ndarray):
    """'decoder.model.3.convtr.convtr.weight_v' -> (('decoder', 'model_3', 'weight_v'), value in our layout)."""
    path, leaf = module_path(key)
    if path == ("transform",):  # SpeechTokenizer's semantic projection, an nn.Linear
        return path + ({"weight": "kernel", "bias": "bias"}[leaf],), value.T if leaf == "weight" else value
    in_norm = "norm" in path  # GroupNorm of time_group_norm: NormConv1d.norm
    transposed = "convtr" in path
    path = tuple(p for p in path if p not in ("conv", "convtr", "norm", "lstm"))
    if in_norm:
        return path + ({"weight": "norm_scale", "bias": "norm_bias"}[leaf],), value
    if leaf == "alpha":  # Snake1d's (1, C, 1)
        return path + (leaf,), value.reshape(-1)
    if leaf == "weight_g":  # (n, 1, 1): torch's weight norm is over all dims but the first
        return path + (leaf,), value.reshape(-1)
    if leaf in ("weight", "weight_v") and value.ndim == 3:
        # Conv1d (out, in, k) and ConvTranspose1d (in, out, k) -> (k, in, out)
        return path + (leaf,), value.transpose(2, 0, 1) if transposed else value.transpose(2, 1, 0)
    return path + (leaf,), value


def from_torch(state_dict, config) -> Codec:
    """A Codec from an official EnCodec state_dict and its config (an EncodecConfig, or a dict
    with upstream's argument names such as the fixtures' config.json)."""
    config = config if isinstance(config, EncodecConfig) else EncodecConfig.from_dict(config)
    model = Encodec(config)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, config.hop_length * 8, config.channels)))
    )
    params = assign_state_dict(
        state_dict,
        {"params": nn.meta.unbox(shapes["params"])},
        lambda k, v: (("params",) + _param(k, v)[0], _param(k, v)[1]),
        ignore=lambda k: k.startswith("quantizer."),
    )["params"]
    layers = {}
    for key, value in state_dict.items():
        m = _CODEBOOK.match(key)
        if m:
            layers.setdefault(int(m.group(1)), {})[m.group(2)] = np.asarray(value)
        elif key.startswith("quantizer."):
            raise ValueError(f"unexpected quantizer key {key}")
    if sorted(layers) != list(range(config.n_q)):
        raise ValueError(f"the state_dict has codebooks {sorted(layers)}; the config says n_q={config.n_q}")
    codebooks = {}
    for name, shape in (
        ("embed", (config.bins, config.dimension)),
        ("embed_avg", (config.bins, config.dimension)),
        ("cluster_size", (config.bins,)),
        ("inited", (1,)),
    ):
        stacked = []
        for k in range(config.n_q):
            if name not in layers[k]:
                raise ValueError(f"missing quantizer.vq.layers.{k}._codebook.{name}")
            value = layers[k][name]
            if value.shape != shape:
                raise ValueError(f"quantizer.vq.layers.{k}._codebook.{name}: shape {value.shape}, expected {shape}")
            stacked.append(value)
        codebooks[name] = np.stack(stacked).astype(np.float32)
    codebooks["inited"] = codebooks["inited"].reshape(-1) > 0
    return Codec(
        config, {"params": jax.tree.map(jnp.asarray, params), "codebooks": jax.tree.map(jnp.asarray, codebooks)}
    )
