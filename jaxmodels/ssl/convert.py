"""transformers' HubertModel / Wav2Vec2Model state_dicts -> SSLEncoder variables,
Wav2Vec2ForPreTraining's -> Wav2Vec2Pretraining variables, HubertForCTC's and
Wav2Vec2ForCTC's -> SSLForCTC variables, and (named as fairseq.py gives them) HuBERT's with
its pretraining head -> HubertPretraining variables.

The encoder layers' weights are stacked along the scanned layer axis; the position
convolution's weight norm keeps its two parts (parametrizations' original0/original1,
or the older weight_g/weight_v). Keys of heads the model does not have (a CTC head, a
pretraining quantizer for a bare encoder) are errors, as is any key or shape that does
not fit."""

import re

import numpy as np

from jaxmodels.nn.state_dict import assign_state_dict, stack_layers

_PREFIX = re.compile(r"^(hubert|wav2vec2)\.")
_POS = re.compile(r"^encoder\.pos_conv_embed\.conv\.(parametrizations\.weight\.original[01]|weight_[gv]|bias)$")
_CONV = re.compile(r"^feature_extractor\.conv_layers\.(\d+)\.(conv|layer_norm)\.(weight|bias)$")
_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_HEAD = re.compile(r"^(quantizer\.weight_proj|project_hid|project_q|final_proj|lm_head)\.(weight|bias)$")


def _leaf(leaf: str, value: np.ndarray) -> tuple:
    if leaf == "bias":
        return "bias", value
    if value.ndim == 1:  # a norm's weight
        return "scale", value
    if value.ndim == 2:  # Linear (out, in) -> (in, out)
        return "kernel", value.T
    return "kernel", value.transpose(2, 1, 0)  # Conv1d (out, in, k) -> (k, in, out)


def _entry(key: str, value: np.ndarray) -> tuple:
    """(Flax path, value in Flax layout, encoder layer index or None) of one upstream key."""
    if key == "quantizer.codevectors":
        return ("quantizer", "codevectors"), value, None
    if key == "label_embs_concat":
        return ("label_embs_concat",), value, None
    if m := _HEAD.match(key):
        name, value = _leaf(m[2], value)
        return (*m[1].split("."), name), value, None
    path, value, index = _encoder_entry(_PREFIX.sub("", key), value)
    return ("encoder", *path), value, index


def _encoder_entry(key: str, value: np.ndarray) -> tuple:
    if key == "masked_spec_embed":
        return ("masked_spec_embed",), value, None
    if m := _POS.match(key):
        if m[1].endswith(("original0", "weight_g")):
            return ("encoder_pos_conv_embed", "weight_g"), value.reshape(-1), None
        if m[1].endswith(("original1", "weight_v")):
            return ("encoder_pos_conv_embed", "weight_v"), value.transpose(2, 1, 0), None
        return ("encoder_pos_conv_embed", "bias"), value, None
    if m := _LAYER.match(key):
        name, value = _leaf(m[3], value)
        return ("encoder_layers", m[2].replace(".", "_"), name), value, int(m[1])
    if m := _CONV.match(key):
        name, value = _leaf(m[3], value)
        return ("feature_extractor", f"conv_layers_{m[1]}_{m[2]}", name), value, None
    module, _, leaf = key.rpartition(".")
    name, value = _leaf(leaf, value)
    return (module.replace(".", "_"), name), value, None


def from_torch(state_dict: dict, model) -> dict:
    """{"params": ...} of `model` (an SSLEncoder, or a Wav2Vec2Pretraining, HubertPretraining or
    SSLForCTC around one) from a transformers state_dict."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from jaxmodels.ssl.model import HubertPretraining, SSLForCTC
    from jaxmodels.ssl.wav2vec2 import Wav2Vec2Pretraining

    audio = jnp.zeros((1, 400))
    if isinstance(model, Wav2Vec2Pretraining):
        init, strip, encoder = lambda k: model.init(k, audio, None, jnp.zeros((1, 1), bool)), (), model.encoder
    elif isinstance(model, (HubertPretraining, SSLForCTC)):
        init, strip, encoder = lambda k: model.init(k, audio), (), model.encoder
    else:
        init, strip, encoder = lambda k: model.init(k, audio), ("encoder",), model
    shapes = nn.meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0)))["params"]
    converted, paths, layers = {}, {}, {}
    for key, value in state_dict.items():
        path, value, index = _entry(key, np.asarray(value))
        path = path[len(strip) :] if path[: len(strip)] == strip else path
        if index is None:
            converted[key], paths[key] = value, path
        else:
            layers.setdefault(path, {})[index] = value
    for path, by_index in layers.items():
        key = f"encoder.layers.*.{'.'.join(path[len(path) - 2 :])}"
        converted[key], paths[key] = stack_layers(key, by_index, encoder.num_hidden_layers), path
    return {"params": assign_state_dict(converted, shapes, lambda key, value: (paths[key], value))}


# Scanned-layer module names -> transformers' (the rest of the encoder's: dots for underscores).
_LAYER_MODULES = {
    "attention_q_proj": "attention.q_proj",
    "attention_k_proj": "attention.k_proj",
    "attention_v_proj": "attention.v_proj",
    "attention_out_proj": "attention.out_proj",
    "layer_norm": "layer_norm",
    "feed_forward_intermediate_dense": "feed_forward.intermediate_dense",
    "feed_forward_output_dense": "feed_forward.output_dense",
    "final_layer_norm": "final_layer_norm",
}
_MODULES = {
    "feature_projection_layer_norm": "feature_projection.layer_norm",
    "feature_projection_projection": "feature_projection.projection",
    "encoder_layer_norm": "encoder.layer_norm",
}


def _torch_leaf(leaf: str, value: np.ndarray) -> tuple:
    """(transformers' name, the value in its layout, contiguous: writers such as safetensors
    store an array's buffer as it lies in memory)."""
    if leaf == "bias":
        return "bias", value
    if leaf == "scale":
        return "weight", value
    return "weight", np.ascontiguousarray(value.T if value.ndim == 2 else value.transpose(2, 1, 0))


def to_torch(params: dict) -> dict:
    """An SSLEncoder's params -> transformers' HubertModel / Wav2Vec2Model state_dict (numpy)."""
    from flax.traverse_util import flatten_dict

    out = {}
    for path, value in flatten_dict(params).items():
        value = np.asarray(value, np.float32)
        if path == ("masked_spec_embed",):
            out["masked_spec_embed"] = value
        elif path[0] == "encoder_pos_conv_embed":
            conv = "encoder.pos_conv_embed.conv."
            if path[1] == "weight_g":
                out[conv + "parametrizations.weight.original0"] = value.reshape(1, 1, -1)
            elif path[1] == "weight_v":
                out[conv + "parametrizations.weight.original1"] = np.ascontiguousarray(value.transpose(2, 1, 0))
            else:
                out[conv + "bias"] = value
        elif path[0] == "encoder_layers":
            for i, layer in enumerate(value):
                name, layer = _torch_leaf(path[2], layer)
                out[f"encoder.layers.{i}.{_LAYER_MODULES[path[1]]}.{name}"] = layer
        elif path[0] == "feature_extractor":
            i, module = re.fullmatch(r"conv_layers_(\d+)_(conv|layer_norm)", path[1]).groups()
            name, value = _torch_leaf(path[2], value)
            out[f"feature_extractor.conv_layers.{i}.{module}.{name}"] = value
        else:
            name, value = _torch_leaf(path[1], value)
            out[f"{_MODULES[path[0]]}.{name}"] = value
    return out
