"""fairseq's HuBERT and wav2vec 2.0 checkpoints (hubert_base_ls960.pt, hubert_large_ll60k.pt,
wav2vec_small.pt, libri960_big.pt, wav2vec_vox_new.pt, ...) -> this package's models, their
pretraining heads included.

The file is read without fairseq: torch's tensors and containers are rebuilt, any other
pickled class (fairseq's Dictionary and enums, omegaconf's containers) becomes an inert
record of its arguments and state. The model's settings are the checkpoint's cfg["model"]
(Hydra-era files) or its args (argparse-era files), fairseq's defaults where a key is absent;
they and the keys map onto transformers' config and names (facts from fairseq's
wav2vec2.py and hubert.py), which from_transformers then converts.
"""

import ast
import operator
import pickle
import re

import numpy as np

# fairseq's Wav2Vec2Config / HubertConfig defaults of the settings read here.
DEFAULTS = {
    "extractor_mode": "default",
    "conv_feature_layers": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2",
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "layer_norm_first": False,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "final_dim": 0,
    "logit_temp": 0.1,
    "latent_vars": 320,
    "latent_groups": 2,
    "latent_dim": 0,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0,
    "dropout_input": 0.0,
    "dropout_features": 0.0,
}
# Settings whose other values build modules transformers' models do not have.
UNSUPPORTED = {
    "conv_pos_batch_norm": False,
    "layer_type": "transformer",
    "pos_conv_depth": 1,
    "quantizer_depth": 1,
    "target_glu": False,
    "quantize_input": False,
}
# fairseq key -> transformers key (of HubertModel / Wav2Vec2Model; the heads' keep their names).
KEYS = [
    (r"^mask_emb$", r"masked_spec_embed"),
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)$", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"^feature_extractor\.conv_layers\.0\.2\.(weight|bias)$", r"feature_extractor.conv_layers.0.layer_norm.\1"),
    (
        r"^feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)$",
        r"feature_extractor.conv_layers.\1.layer_norm.\2",
    ),
    (r"^layer_norm\.(weight|bias)$", r"feature_projection.layer_norm.\1"),
    (r"^post_extract_proj\.(weight|bias)$", r"feature_projection.projection.\1"),
    (r"^encoder\.pos_conv\.0\.(bias|weight_g|weight_v)$", r"encoder.pos_conv_embed.conv.\1"),
    (r"^encoder\.layer_norm\.(weight|bias)$", r"encoder.layer_norm.\1"),
    (
        r"^encoder\.layers\.(\d+)\.self_attn\.(k|v|q|out)_proj\.(weight|bias)$",
        r"encoder.layers.\1.attention.\2_proj.\3",
    ),
    (r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)$", r"encoder.layers.\1.layer_norm.\2"),
    (r"^encoder\.layers\.(\d+)\.fc1\.(weight|bias)$", r"encoder.layers.\1.feed_forward.intermediate_dense.\2"),
    (r"^encoder\.layers\.(\d+)\.fc2\.(weight|bias)$", r"encoder.layers.\1.feed_forward.output_dense.\2"),
    (r"^encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)$", r"encoder.layers.\1.final_layer_norm.\2"),
    (r"^quantizer\.vars$", r"quantizer.codevectors"),
    (r"^(quantizer\.weight_proj|project_q)\.(weight|bias)$", r"\1.\2"),
    (r"^label_embs_concat$", r"label_embs_concat"),
]


class Record:
    """A pickled object of a class this reader does not build: its arguments and state."""

    args, kwargs, state = (), {}, None

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module.split(".")[0] in ("torch", "collections", "numpy", "_codecs", "copyreg"):
            return super().find_class(module, name)
        return type(name, (Record,), {"__module__": module})


class _PickleModule:
    """torch.load's pickle_module: the permissive unpickler."""

    Unpickler = _Unpickler
    load = staticmethod(lambda f, **kw: _Unpickler(f, **kw).load())


def load_checkpoint(path: str) -> dict:
    """A fairseq checkpoint file as a dict ("model": the state_dict of tensors, "cfg" or "args")."""
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PickleModule)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise ValueError(f"{path} is not a fairseq checkpoint (a dict with the model's state_dict in 'model')")
    return checkpoint


def _value(v):
    """A setting's plain value: an enum's (a Record of its value) or as it is."""
    return v.args[0] if isinstance(v, Record) and v.args else v


def _settings(checkpoint: dict) -> dict:
    cfg, args = checkpoint.get("cfg"), checkpoint.get("args")
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        model = cfg["model"]
    elif isinstance(args, Record) and isinstance(args.state, dict):  # an argparse.Namespace
        model = args.state
    elif isinstance(args, dict):
        model = args
    else:
        raise ValueError("the checkpoint holds no model settings (neither cfg['model'] nor args)")
    return {**DEFAULTS, **{k: _value(v) for k, v in model.items()}}


_OPERATORS = {ast.Add: operator.add, ast.Mult: operator.mul}


def _layers(spec: str) -> list:
    """conv_feature_layers, a Python expression of lists of (dim, kernel, stride) tuples with + and
    *, evaluated without eval."""

    def value(node):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"conv_feature_layers {spec!r}: not a list of (dim, kernel, stride)")

    return value(ast.parse(spec, mode="eval").body)


def transformers_config(settings: dict, state_dict: dict) -> dict:
    """The transformers config (to_dict() form) of a fairseq model's settings."""
    for key, supported in UNSUPPORTED.items():
        if key in settings and settings[key] != supported:
            raise ValueError(f"{key}={settings[key]!r}: only {supported!r} is supported (as transformers' models)")
    if settings["extractor_mode"] not in ("default", "layer_norm"):
        raise ValueError(f"extractor_mode {settings['extractor_mode']!r}: expected default or layer_norm")
    layers = _layers(settings["conv_feature_layers"])
    hubert = "label_embs_concat" in state_dict or settings.get("_name") == "hubert"
    config = {
        "model_type": "hubert" if hubert else "wav2vec2",
        "hidden_size": settings["encoder_embed_dim"],
        "num_hidden_layers": settings["encoder_layers"],
        "num_attention_heads": settings["encoder_attention_heads"],
        "intermediate_size": settings["encoder_ffn_embed_dim"],
        "conv_dim": [d for d, _, _ in layers],
        "conv_kernel": [k for _, k, _ in layers],
        "conv_stride": [s for _, _, s in layers],
        # As transformers' converter: the bias is there or not (HuBERT Large's yaml leaves it unset).
        "conv_bias": "feature_extractor.conv_layers.0.0.bias" in state_dict,
        "feat_extract_norm": {"default": "group", "layer_norm": "layer"}[settings["extractor_mode"]],
        "do_stable_layer_norm": bool(settings["layer_norm_first"]),
        "num_conv_pos_embeddings": settings["conv_pos"],
        "num_conv_pos_embedding_groups": settings["conv_pos_groups"],
        "hidden_dropout": settings["dropout"],
        "attention_dropout": settings["attention_dropout"],
        "activation_dropout": settings["activation_dropout"],
        "layerdrop": settings["encoder_layerdrop"],
        "feat_proj_dropout": settings["dropout_input"],
    }
    final_dim = settings["final_dim"] or settings["encoder_embed_dim"]
    if not hubert:
        config.update(
            num_codevector_groups=settings["latent_groups"],
            num_codevectors_per_group=settings["latent_vars"],
            codevector_dim=settings["latent_dim"] or final_dim,
            proj_codevector_dim=final_dim,
            feat_quantizer_dropout=settings["dropout_features"],
        )
    return config


def transformers_state_dict(state_dict: dict, hubert: bool) -> dict:
    """fairseq's keys as transformers' (final_proj: HuBERT's keeps its name, wav2vec 2.0's is
    project_hid); arrays in float32. A key no rule matches is kept as it is (and then named
    by the converter as unexpected)."""
    out = {}
    for key, value in state_dict.items():
        value = np.asarray(value.float().numpy() if hasattr(value, "float") else value)
        if key.startswith("final_proj."):
            out[key if hubert else key.replace("final_proj.", "project_hid.")] = value
            continue
        for pattern, name in KEYS:
            if re.match(pattern, key):
                key = re.sub(pattern, name, key)
                break
        out[key] = value
    return out


def from_fairseq(checkpoint: dict, pretraining: bool = True, **overrides) -> tuple:
    """(model, variables) of a fairseq HuBERT or wav2vec 2.0 checkpoint (load_checkpoint's dict):
    with `pretraining`, the model with its head (ssl.HubertPretraining: final_proj and the
    label embeddings, whose rows are the label dictionary's, four special symbols first; or
    ssl.Wav2Vec2Pretraining); else the encoder alone (an SSLEncoder)."""
    from jaxmodels.ssl import from_transformers
    from jaxmodels.ssl.convert import from_torch
    from jaxmodels.ssl.model import HubertPretraining

    settings = _settings(checkpoint)
    config = transformers_config(settings, checkpoint["model"])
    hubert = config["model_type"] == "hubert"
    state_dict = transformers_state_dict(checkpoint["model"], hubert)
    heads = ("final_proj.", "label_embs_concat") if hubert else ("quantizer.", "project_q.", "project_hid.")
    encoder_keys = {k: v for k, v in state_dict.items() if not k.startswith(heads)}
    if not pretraining or not hubert:
        return from_transformers(state_dict if pretraining else encoder_keys, config, **overrides)
    encoder, _ = from_transformers(encoder_keys, config, **overrides)
    labels = state_dict.get("label_embs_concat")
    if labels is None:
        raise ValueError("a HuBERT pretraining checkpoint has label_embs_concat; this one has none")
    model = HubertPretraining(encoder, labels.shape[0], labels.shape[1], settings["logit_temp"])
    return model, from_torch(state_dict, model)
