"""Self-supervised speech encoders: wav2vec 2.0, HuBERT and w2v-BERT 2.0 (transformers'
models), named configs at their published sizes, the pretraining objectives of the first
two, and the converters of transformers' checkpoints."""

from jaxmodels.nn import variants
from jaxmodels.ssl import fairseq, w2v_bert
from jaxmodels.ssl.convert import from_torch, to_torch
from jaxmodels.ssl.model import (
    HubertPretraining,
    SSLEncoder,
    SSLForCTC,
    hubert_loss,
    output_lengths,
    span_mask,
)
from jaxmodels.ssl.w2v_bert import W2vBertEncoder
from jaxmodels.ssl.wav2vec2 import (
    GumbelVectorQuantizer,
    Wav2Vec2Pretraining,
    contrastive_logits,
    sample_negatives,
    wav2vec2_loss,
)


def _large(width: int, layers: int) -> dict:
    """The Large models' layout: pre-LN, a layer norm after every feature convolution (with bias)."""
    size = dict(hidden_size=width, num_hidden_layers=layers, num_attention_heads=16, intermediate_size=4 * width)
    return dict(size, conv_bias=True, feat_extract_norm="layer", do_stable_layer_norm=True)


# The released checkpoints' transformers configs (facebook/hubert-base-ls960, hubert-large-ll60k,
# hubert-xlarge-ll60k, wav2vec2-base, wav2vec2-large-lv60; w2v-bert-2.0: W2vBertEncoder's
# defaults); the Base ones are SSLEncoder's defaults.
VARIANTS = {
    "hubert_base": {},
    "hubert_large": _large(1024, 24),
    "hubert_xlarge": _large(1280, 48),
    "wav2vec2_base": {},
    "wav2vec2_large": _large(1024, 24),
    "w2v_bert_2": {},
}
CLASSES = {"w2v_bert_2": W2vBertEncoder}
# transformers' config keys the model takes (the rest are training settings or heads').
CONFIG_KEYS = tuple(
    f for f in SSLEncoder.__dataclass_fields__ if f not in ("parent", "name", "dtype", "remat", "norm_valid_frames")
)


def create(name: str, **overrides):
    """A named config (hubert_base, hubert_large, hubert_xlarge, wav2vec2_base, wav2vec2_large:
    an SSLEncoder; w2v_bert_2: a W2vBertEncoder)."""
    return variants.create(CLASSES.get(name, SSLEncoder), VARIANTS, name, **overrides)


# transformers' Wav2Vec2Config keys of the pretraining head.
HEAD_KEYS = (
    "num_codevector_groups",
    "num_codevectors_per_group",
    "codevector_dim",
    "proj_codevector_dim",
    "feat_quantizer_dropout",
)


def from_transformers(state_dict: dict, config: dict, **overrides) -> tuple:
    """(model, variables) of a transformers HubertModel or Wav2Vec2Model (an SSLEncoder), of a
    Wav2Vec2ForPreTraining (a Wav2Vec2Pretraining), of a HubertForCTC or Wav2Vec2ForCTC (an
    SSLForCTC) or of a Wav2Vec2BertModel (a W2vBertEncoder):
    its state_dict and its config (config.to_dict(), or the config.json beside the weights)."""
    if config.get("model_type") == "wav2vec2-bert":
        return w2v_bert.from_transformers(state_dict, config, **overrides)
    if config.get("model_type") not in ("hubert", "wav2vec2"):
        raise ValueError(f"model_type {config.get('model_type')!r}: expected hubert, wav2vec2 or wav2vec2-bert")
    if config.get("conv_pos_batch_norm"):
        raise ValueError("conv_pos_batch_norm: a batch-normed position convolution is not supported")
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in CONFIG_KEYS}
    if config["model_type"] == "wav2vec2":
        args["feat_proj_layer_norm"] = True
    model = SSLEncoder(**args, **overrides)
    if "quantizer.codevectors" in state_dict:
        model = Wav2Vec2Pretraining(model, **{k: config[k] for k in HEAD_KEYS if k in config})
    elif "lm_head.weight" in state_dict:
        model = SSLForCTC(model, config["vocab_size"], config.get("final_dropout", 0.1))
    return model, from_torch(state_dict, model)


def to_transformers(model: SSLEncoder, variables: dict, model_type: str = "hubert") -> tuple:
    """(state_dict, config) of an SSLEncoder as transformers' HubertModel (or, model_type
    wav2vec2, Wav2Vec2Model): numpy arrays under its keys and its config.to_dict() keys, which
    transformers and from_transformers load."""
    if model_type not in ("hubert", "wav2vec2"):
        raise ValueError(f"model_type {model_type!r}: expected hubert or wav2vec2")
    if model_type == "wav2vec2" and not model.feat_proj_layer_norm:
        raise ValueError("a wav2vec2 model always has the feature projection's layer norm; this one has none")
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(model, k)) for k in CONFIG_KEYS)}
    if model_type == "wav2vec2":
        del config["feat_proj_layer_norm"]
    names = {"hubert": "HubertModel", "wav2vec2": "Wav2Vec2Model"}
    return to_torch(variables["params"]), {**config, "model_type": model_type, "architectures": [names[model_type]]}


def load_pretrained(path: str, **overrides) -> tuple:
    """(model, variables) of a transformers checkpoint file (model.safetensors or
    pytorch_model.bin of a HubertModel or Wav2Vec2Model, or of a model around one, whose
    prefix hubert./wav2vec2. is dropped, of a Wav2Vec2ForPreTraining or a Wav2Vec2BertModel) and
    the config.json beside it."""
    import json
    import os

    from jaxmodels.nn import load_state_dict

    config_path = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{path}: no config.json beside it (transformers keeps one with the weights)")
    with open(config_path) as f:
        config = json.load(f)
    return from_transformers(load_state_dict(path), config, **overrides)


def load_fairseq(path: str, pretraining: bool = True, **overrides) -> tuple:
    """(model, variables) of a fairseq checkpoint file (hubert_base_ls960.pt, wav2vec_small.pt, ...):
    with its pretraining head unless `pretraining` is False (see ssl.fairseq)."""
    return fairseq.from_fairseq(fairseq.load_checkpoint(path), pretraining, **overrides)


def param_count(model) -> int:
    """As transformers' parameters() (the masked-frame embedding included)."""
    import jax.numpy as jnp

    if isinstance(model, W2vBertEncoder):
        return variants.param_count(model, jnp.zeros((1, 8, model.feature_projection_input_dim)))
    return variants.param_count(model, jnp.zeros((1, 400)))


__all__ = [
    "HEAD_KEYS",
    "VARIANTS",
    "GumbelVectorQuantizer",
    "HubertPretraining",
    "SSLEncoder",
    "SSLForCTC",
    "W2vBertEncoder",
    "Wav2Vec2Pretraining",
    "contrastive_logits",
    "create",
    "from_torch",
    "from_transformers",
    "hubert_loss",
    "load_fairseq",
    "load_pretrained",
    "output_lengths",
    "param_count",
    "sample_negatives",
    "span_mask",
    "to_torch",
    "to_transformers",
    "wav2vec2_loss",
]
