"""Stable Diffusion's VAE against diffusers' AutoencoderKL (tests/data/make_vae_reference.py)."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmodels import vae

sys.path.insert(0, str(ROOT / "tests" / "data"))
from make_vae_reference import diffusers_to_ldm  # noqa: E402


@pytest.fixture(scope="module")
def reference():
    with np.load(ROOT / "tests" / "data" / "vae_reference.npz") as f:
        ref = {k: f[k] for k in f.files}
    config = json.loads(str(ref.pop("config")))
    model = vae.AutoencoderKL(
        block_out_channels=tuple(config["block_out_channels"]),
        layers_per_block=config["layers_per_block"],
        norm_num_groups=config["norm_num_groups"],
        latent_channels=config["latent_channels"],
    )
    state_dict = {k[3:]: ref.pop(k) for k in list(ref) if k.startswith("sd/")}
    return model, state_dict, ref


def test_reproduces_diffusers_encode_and_decode(reference):
    model, state_dict, ref = reference
    variables = vae.from_torch(state_dict, model)
    mean, logvar = model.apply(variables, ref["images"], method="encode")
    np.testing.assert_allclose(mean, ref["mean"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.exp(0.5 * logvar), ref["std"], rtol=1e-4, atol=1e-5)
    decoded = model.apply(variables, ref["latents"], method="decode")
    np.testing.assert_allclose(decoded, ref["decoded"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.apply(variables, ref["images"]), ref["reconstruction"], rtol=1e-4, atol=1e-5)


def test_the_original_layout_loads_the_same_weights(reference):
    model, state_dict, _ = reference
    ldm = diffusers_to_ldm(state_dict, len(model.block_out_channels))
    ldm["loss.discriminator.main.0.weight"] = np.zeros((2, 3, 4, 4), np.float32)  # the training loss's: left out
    expected = vae.from_torch(state_dict, model)
    for layout in (ldm, {f"first_stage_model.{k}": v for k, v in ldm.items()}):
        jax.tree.map(np.testing.assert_array_equal, vae.from_torch(layout, model), expected)


def test_a_checkpoint_of_another_model_is_named(reference):
    model, state_dict, _ = reference
    wrong = {k: v for k, v in state_dict.items() if "decoder.conv_out" not in k}
    wrong["encoder.conv_in.weight"] = np.zeros((8, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"missing parameters: decoder/conv_out/(bias|kernel)") as e:
        vae.from_torch(wrong, model)
    assert "encoder.conv_in.weight: checkpoint (5, 5, 3, 8) vs model (3, 3, 3, 8)" in str(e.value)


def test_published_config_and_names():
    model = vae.create("sd-vae-ft-ema")
    assert vae.param_count(model) == 83_653_863  # sum(p.numel()) of diffusers' AutoencoderKL from that config
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))["params"]
    up = shapes["decoder"]["up_blocks_3"]["resnets_0"]
    assert up["conv_shortcut"]["kernel"].value.shape == (1, 1, 256, 128)
    assert shapes["encoder"]["mid_block"]["attentions_0"]["to_q"]["kernel"].names == ("embed", "mlp")
    with pytest.raises(ValueError, match="unknown AutoencoderKL variant 'sd-vae'; valid: sd-vae-ft-ema, sd-vae-ft"):
        vae.create("sd-vae")


def test_sharded_over_the_batch_equals_one_device_and_bfloat16_is_close(reference):
    model, state_dict, ref = reference
    variables = vae.from_torch(state_dict, model)
    images = np.concatenate([ref["images"]] * 4)
    encode = jax.jit(lambda v, x: model.apply(v, x, method=model.encode)[0])
    one = encode(variables, images)
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    sharded = encode(variables, jax.device_put(images, NamedSharding(mesh, P("data"))))
    assert sharded.sharding.spec == P("data")
    np.testing.assert_allclose(sharded, one, rtol=1e-5, atol=1e-6)
    half = model.clone(dtype=jnp.bfloat16)
    decoded = jax.jit(lambda v, z: half.apply(v, z, method=half.decode))(variables, ref["latents"])
    assert decoded.dtype == jnp.float32
    np.testing.assert_allclose(decoded, ref["decoded"], atol=0.05 * np.abs(ref["decoded"]).max())
