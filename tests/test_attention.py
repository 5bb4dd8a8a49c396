"""dot_product_attention's implementations: the CPU's custom VJP against jax.nn's XLA composition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.nn.attention import dot_product_attention


def _inputs(q_heads=4, kv_heads=4, dtype=jnp.float32):
    q = jax.random.normal(jax.random.PRNGKey(0), (2, 6, q_heads, 8), dtype)
    k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, 7, kv_heads, 8), dtype) for i in (1, 2))
    return q, k, v


def test_the_cpu_takes_the_custom_vjp_equal_to_the_definition():
    q, k, v = _inputs()
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8)
    expected = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, -1), v)
    np.testing.assert_allclose(dot_product_attention(q, k, v), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(dot_product_attention(q, k, v), dot_product_attention(q, k, v, "custom_vjp"))


@pytest.mark.parametrize("case", ["plain", "mask", "bias", "lengths", "grouped", "bfloat16"])
def test_custom_vjp_equals_xla_with_its_gradients(case):
    """Outputs and the gradients of q, k, v (and the bias) as jax.nn's "xla", with a causal mask that
    leaves a row no key (then every key counts evenly, as jax.nn's masking), an additive bias, key
    lengths, grouped-query heads and bfloat16 inputs."""
    dtype = jnp.bfloat16 if case == "bfloat16" else jnp.float32
    q, k, v = _inputs(kv_heads=2 if case == "grouped" else 4, dtype=dtype)
    mask = bias = lengths = None
    if case == "mask":
        causal = jnp.arange(7)[None, :] <= jnp.arange(6)[:, None] - 1  # query 0 sees no key
        mask = jnp.broadcast_to(causal, (2, 1, 6, 7))
    if case == "bias":
        bias = jax.random.normal(jax.random.PRNGKey(3), (2, 4, 6, 7))
    if case == "lengths":
        lengths = jnp.array([7, 3])
    probe = jax.random.normal(jax.random.PRNGKey(4), (2, 6, 4, 8))

    def loss(implementation, q, k, v, bias):
        out = dot_product_attention(q, k, v, implementation, lengths, bias=bias, mask=mask)
        return jnp.sum(out.astype(jnp.float32) * probe), out

    argnums = (1, 2, 3, 4) if case == "bias" else (1, 2, 3)
    (_, out_xla), grads_xla = jax.value_and_grad(loss, argnums, has_aux=True)("xla", q, k, v, bias)
    (_, out_vjp), grads_vjp = jax.value_and_grad(loss, argnums, has_aux=True)("custom_vjp", q, k, v, bias)
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == jnp.bfloat16 else dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.float32(out_vjp), np.float32(out_xla), **tol)
    assert out_vjp.dtype == out_xla.dtype
    for a, b in zip(grads_vjp, grads_xla, strict=True):
        assert float(jnp.max(jnp.abs(b.astype(jnp.float32)))) > 0
        np.testing.assert_allclose(np.float32(a), np.float32(b), **tol)


@pytest.mark.parametrize(
    "equation",
    ["bld,kdhe->blkhe", "bld,dkhe->bkhle"],  # the kernel's contracted axis not first; the output reordered
)
def test_projection_rejects_an_equation_dense_product_does_not_compute(equation):
    from jaxmodels.nn.attention import Projection

    layer = Projection(equation, (12, 3, 4, 5), ("embed", None, "heads", "kv"), 1)
    with pytest.raises(ValueError, match="Projection equation"):
        layer.init(jax.random.PRNGKey(0), jnp.zeros((2, 6, 12)))
