"""Qwen2 (transformers' Qwen2Model), the decoder under CosyVoice 2's text-to-token LM.

Pre-norm decoder layers: RMSNorm, grouped-query attention (queries, keys and values with
biases, fewer key/value heads than query heads, rotary positions at rope_theta, causal), a
SwiGLU feed-forward (down(silu(gate(x)) * up(x)), no biases); a final RMSNorm. The layers
are one scanned module over stacked parameters (`layers`), names as transformers'
(`model.layers.3.self_attn.q_proj` is row 3 of `layers/self_attn_q_proj`). Inputs are
embeddings (CosyVoice 2 mixes text and speech tokens' embeddings), each token with its
position; `valid` marks real tokens (padding at either end is never attended to).

Decoding: called with `decode=True`, the first call on an empty cache creates it from an
input as long as the whole sequence (`empty_cache`); every later call appends its tokens' keys and values at the
cache's index (a prefill of many tokens, then steps of one) and attends over the cache.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.nn.attention import dot_product_attention
from jaxmodels.nn.layers import Dense, constrain, repeated
from jaxmodels.nn.variants import named_config
from jaxmodels.speechlm.transformer import kv_cache, rope


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
    """transformers' Qwen2Config fields the model reads; defaults Qwen2-0.5B's (CosyVoice 2's LM)."""

    vocab_size: int = 151936
    hidden_size: int = 896
    intermediate_size: int = 4864
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    rope_theta: float = 1000000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


CONFIGS = {"qwen2_0.5b": Qwen2Config()}  # 494,032,768 parameters (the head tied to the embeddings)


def config(name: str, **overrides) -> Qwen2Config:
    return named_config(CONFIGS, name, "Qwen2", **overrides)


class RMSNorm(nn.Module):
    eps: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (x.shape[-1],))
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(jnp.square(h), axis=-1, keepdims=True) + self.eps)
        return weight.astype(self.dtype) * h.astype(self.dtype)  # transformers: weight * h.to(input dtype)


class DecoderLayer(nn.Module):
    config: Qwen2Config
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, positions, valid, decode: bool = False):
        c = self.config
        b, length, _ = x.shape
        dense = lambda n, axes, name, bias=True: Dense(n, axes, bias, self.dtype, name=name)  # noqa: E731
        h = RMSNorm(c.rms_norm_eps, self.dtype, name="input_layernorm")(x)
        q = dense(c.num_attention_heads * c.head_dim, ("embed", "heads"), "self_attn_q_proj")(h)
        k = dense(c.num_key_value_heads * c.head_dim, ("embed", "heads"), "self_attn_k_proj")(h)
        v = dense(c.num_key_value_heads * c.head_dim, ("embed", "heads"), "self_attn_v_proj")(h)
        q = q.reshape(b, length, c.num_attention_heads, c.head_dim)
        k, v = (t.reshape(b, length, c.num_key_value_heads, c.head_dim) for t in (k, v))
        q, k = rope(q, positions, c.rope_theta), rope(k, positions, c.rope_theta)
        q_slots = jnp.arange(length)
        if decode:
            k, v, valid, q_slots = kv_cache(self, k, v, valid)
        mask = valid[:, None, None, :] & (jnp.arange(k.shape[1])[None, :] <= q_slots[:, None])[None, None]
        attended = dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask)
        attended = attended.reshape(b, length, c.num_attention_heads * c.head_dim)
        x = x + dense(c.hidden_size, ("heads", "embed"), "self_attn_o_proj", bias=False)(attended)
        h = RMSNorm(c.rms_norm_eps, self.dtype, name="post_attention_layernorm")(x)
        gate = dense(c.intermediate_size, ("embed", "mlp"), "mlp_gate_proj", bias=False)(h)
        up = dense(c.intermediate_size, ("embed", "mlp"), "mlp_up_proj", bias=False)(h)
        h = constrain(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
        x = x + dense(c.hidden_size, ("mlp", "embed"), "mlp_down_proj", bias=False)(h)
        return constrain(x, ("batch", "length", "act_embed"))


class Qwen2Model(nn.Module):
    """Embeddings (B, L, hidden) at positions (B, L), `valid` (B, L) -> the final norm's states."""

    config: Qwen2Config
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    def setup(self):
        c = self.config
        self.embed_tokens = nn.Embed(
            c.vocab_size,
            c.hidden_size,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
        )
        layer = nn.remat(DecoderLayer, static_argnums=(4,)) if self.remat else DecoderLayer  # decode: static
        self.layers = repeated(layer, c.num_hidden_layers)(c, self.dtype)
        self.norm = RMSNorm(c.rms_norm_eps, self.dtype)

    def __call__(self, embeddings, positions, valid, decode: bool = False):
        x = constrain(embeddings.astype(self.dtype), ("batch", "length", "act_embed"))
        x, _ = self.layers(x, positions, valid, decode)
        return self.norm(x)

    def embed(self, tokens):
        return self.embed_tokens(tokens)

    def logits(self, hidden):
        """The LM head: the embedding table transposed (tied, as Qwen2-0.5B's)."""
        return self.embed_tokens.attend(hidden.astype(jnp.float32))


def _init_all(model: Qwen2Model, embeddings, positions, valid):
    """The forward pass and the token table: every parameter (init's method)."""
    return model(embeddings, positions, valid), model.embed(positions)


def init_shapes(cfg: Qwen2Config):
    x, positions = jnp.zeros((1, 2, cfg.hidden_size)), jnp.zeros((1, 2), jnp.int32)
    model = Qwen2Model(cfg)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x, positions, positions > -1, method=_init_all))


def param_count(cfg: Qwen2Config) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nn.meta.unbox(init_shapes(cfg))["params"]))


def empty_cache(model: Qwen2Model, batch: int, length: int):
    """A zeroed KV cache for ``batch`` sequences of at most ``length`` tokens."""
    x, positions = jnp.zeros((batch, length, model.config.hidden_size)), jnp.zeros((batch, length), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, positions, positions > -1, decode=True))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


def from_torch(state_dict, cfg: Qwen2Config, prefix: str = "") -> dict:
    """{"params": ...} of a Qwen2Model from transformers' state_dict (keys under ``prefix``, e.g.
    "model." of a Qwen2ForCausalLM); the layers stacked. A tied lm_head is left out; a key,
    layer or shape that does not fit is an error listing them."""
    from jaxmodels.nn.state_dict import assign_state_dict, stack_layers

    shapes = nn.meta.unbox(init_shapes(cfg))["params"]

    def key_map(key, value):
        """(Flax path, value) of one tensor; a layer's named "layers.<module>.<leaf>"."""
        module, leaf = key.rsplit(".", 1)
        path = ("layers", module.removeprefix("layers.")) if module.startswith("layers.") else tuple(module.split("."))
        if leaf == "weight" and module == "embed_tokens":
            return (*path, "embedding"), value
        if leaf == "weight" and value.ndim == 2:  # a Linear's (out, in)
            return (*path, "kernel"), value.T
        return (*path, leaf), value

    converted, paths, layers = {}, {}, {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        key = key.removeprefix(prefix)
        parts = key.split(".")
        if parts[0] == "layers":
            name = "layers." + "_".join(parts[2:-1]) + "." + parts[-1]
            path, value = key_map(name, np.asarray(value))
            layers.setdefault(name, (path, {}))[1][int(parts[1])] = value
        else:
            paths[key], converted[key] = key_map(key, np.asarray(value))
    for name, (path, by_index) in layers.items():
        converted[name] = stack_layers(name.replace(".", ".*.", 1), by_index, cfg.num_hidden_layers)
        paths[name] = path
    ignore = lambda key: key == "lm_head.weight" and cfg.tie_word_embeddings  # noqa: E731
    return {"params": assign_state_dict(converted, shapes, lambda key, value: (paths[key], value), ignore)}
