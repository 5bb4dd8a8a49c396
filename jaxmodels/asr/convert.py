"""Official SenseVoice-Small weights (FunASR's model.pt state_dict, upstream key names) ->
Flax variables for SenseVoiceSmall."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.asr.model import SenseVoiceEncoderSmall, SenseVoiceSmall
from jaxmodels.nn.state_dict import (
    assign_state_dict,
    load_state_dict,
    module_path,
    stack_layers,
    torch_to_flax_leaf,
)

# The layers that SenseVoiceEncoderSmall scans over: encoder.encoders.<i>.<name> of every i
# is one parameter, encoders/<name>, stacked in layer order.
STACKED = re.compile(r"(encoder\.(?:tp_)?encoders)\.(\d+)\.(.+)")


def _converted(state_dict, model: SenseVoiceSmall) -> tuple[dict, dict]:
    """(values, Flax paths) by upstream key, each value in Flax layout; the scanned layers'
    under their key without the index, stacked in layer order."""
    values, paths, stacks = {}, {}, {}
    for key, value in state_dict.items():
        if match := STACKED.fullmatch(key):
            name = f"{match[1]}.{match[3]}"
            path, value = _layer_key_map(name, value)
            stacks.setdefault(name, (path, {}))[1][int(match[2])] = value
        else:
            paths[key], values[key] = _layer_key_map(key, value)
    encoder = SenseVoiceEncoderSmall(**(model.encoder_conf or {}))
    lengths = {"encoder.encoders": encoder.num_blocks - 1, "encoder.tp_encoders": encoder.tp_blocks}
    for name, (path, by_index) in stacks.items():
        group = name.split(".", 2)
        values[name] = stack_layers(f"{group[0]}.{group[1]}.*.{group[2]}", by_index, lengths[".".join(group[:2])])
        paths[name] = path
    return values, paths


def _layer_key_map(key, value):
    path, leaf = module_path(key)
    if path == ("embed",):  # nn.Embedding (rows, input_size) stays as it is
        return ("embed", "embedding"), value
    if path[-1] == "fsmn_block":  # depthwise Conv1d (C, 1, k) -> (k, C)
        return path, value[:, 0, :].T
    if path[0] == "ctc":  # ctc.ctc_lo -> ctc_lo
        path = path[1:]
    name, value = torch_to_flax_leaf(leaf, value)
    return path + (name,), value


def infer_config(state_dict, attention_heads: int = 4) -> dict:
    """SenseVoiceSmall's arguments from a state_dict (the head count is not in the weights)."""
    layers = lambda prefix: len({k.split(".")[2] for k in state_dict if k.startswith(prefix)})  # noqa: E731
    qkv = state_dict["encoder.encoders0.0.self_attn.linear_q_k_v.weight"]
    return dict(
        vocab_size=int(state_dict["ctc.ctc_lo.weight"].shape[0]),
        input_size=int(qkv.shape[1]),
        use_prompts="embed.weight" in state_dict,
        encoder_conf=dict(
            output_size=int(qkv.shape[0]) // 3,
            attention_heads=attention_heads,
            linear_units=int(state_dict["encoder.encoders0.0.feed_forward.w_1.weight"].shape[0]),
            num_blocks=1 + layers("encoder.encoders."),
            tp_blocks=layers("encoder.tp_encoders."),
            kernel_size=int(state_dict["encoder.encoders0.0.self_attn.fsmn_block.weight"].shape[-1]),
        ),
    )


def from_torch(state_dict, model: SenseVoiceSmall | None = None):
    """Converts a SenseVoice state_dict (dict of arrays or tensors, or a .pt/.safetensors
    path) into ``{"params": ...}``; without ``model`` the config is read off the weights
    (4 attention heads, as published). Every unexpected key, missing parameter and shape
    mismatch is named."""
    if isinstance(state_dict, str):
        state_dict = load_state_dict(state_dict)
    state_dict = {
        k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in state_dict.items()
    }
    model = model or SenseVoiceSmall(**infer_config(state_dict))
    feats = jnp.zeros((1, 8, model.input_size))
    shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.PRNGKey(0), feats, jnp.full((1,), 8))))
    values, paths = _converted(state_dict, model)
    return {"params": assign_state_dict(values, shapes["params"], lambda key, value: (paths[key], value))}
