"""The models of model.name: VALL-E's AR and NAR, or one delayed LM."""

from __future__ import annotations

import jax.numpy as jnp

from jaxmodels import speechlm
from jaxmodels.speechlm import VALLEAR, VALLENAR, DelayedLM

TEXT_VOCAB = 256  # bytes


def build_models(cfg):
    """{"ar": VALLEAR, "nar": VALLENAR} for model.name valle, else {"lm": DelayedLM}; model.args go to each
    model that takes them (an argument none takes is an error)."""
    dtype, remat = jnp.dtype(cfg.train.compute_dtype), cfg.train.remat
    args = dict(cfg.model.args)
    if cfg.model.name == "valle":
        classes = {"ar": VALLEAR, "nar": VALLENAR}
    elif cfg.model.name == "delayed" or speechlm.VARIANTS.get(cfg.model.name, (None,))[0] is DelayedLM:
        classes = {"lm": DelayedLM}
    else:
        raise ValueError(
            f"task tts: model.name must be valle, delayed or a DelayedLM config "
            f"({', '.join(n for n, (c, _) in speechlm.VARIANTS.items() if c is DelayedLM)}), "
            f"not {cfg.model.name!r}"
        )
    fields = {k: set(c.__dataclass_fields__) - {"parent", "name"} for k, c in classes.items()}
    unknown = set(args) - set().union(*fields.values())
    if unknown:
        raise ValueError(
            f"model.args: unknown argument(s) {sorted(unknown)}; valid: {sorted(set().union(*fields.values()))}"
        )
    base = speechlm.VARIANTS[cfg.model.name][1] if cfg.model.name in speechlm.VARIANTS else {}
    models = {
        k: c(**{**base, **{a: v for a, v in args.items() if a in fields[k]}, "dtype": dtype, "remat": remat})
        for k, c in classes.items()
    }
    t = cfg.tts
    if "ar" in models and t.max_frames % models["ar"].group_size:
        raise ValueError(
            f"tts.max_frames={t.max_frames} must be a multiple of the AR's group_size {models['ar'].group_size}"
        )
    if "ar" not in models and (t.guidance_dropout or t.guidance_scale != 1.0):
        raise ValueError(
            "tts.guidance_dropout and tts.guidance_scale guide VALL-E's AR on its text (model.name valle)"
        )
    if t.condition == "semantic" and "lm" not in models:
        raise ValueError(
            "tts.condition semantic conditions a delayed LM (AudioLM's acoustic stage); VALL-E reads text"
        )
    needed = t.semantic_clusters if t.condition == "semantic" else TEXT_VOCAB
    for m in models.values():
        vocab = getattr(m, "text_vocab_size", None) or m.cond_vocab_size
        if vocab < needed:
            raise ValueError(
                f"model.args: the conditioning vocabulary must hold {needed} "
                f"{'semantic tokens' if t.condition == 'semantic' else 'byte values'}, not {vocab}"
            )
    return models
