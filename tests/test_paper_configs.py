"""The paper-scale configs build their real models and compile sharded (reduced batch)."""
import jax
import numpy as np

from trainers import config as config_lib
from trainers.loop import Trainer


def test_mambaout_tiny_imagenet_compiles_fsdp_sharded():
    cfg = config_lib.load("configs/mambaout_tiny_imagenet.yaml", ["data.batch_size=8", "mesh.data=1", "mesh.fsdp=8"])
    trainer = Trainer(cfg)
    params = jax.tree.leaves(trainer.abstract_state.params)
    assert sum(p.size for p in params) == 26545096  # the published MambaOut-Tiny
    assert any("fsdp" in str(p.sharding.spec) for p in params)
    batch = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=trainer.batch_shardings[k])
        for k, v in trainer.task.example_batch(8).items()
    }
    assert batch["image"].shape == (8, 224, 224, 3)
    with trainer.context():
        compiled = trainer.train_step.lower(trainer.abstract_state, batch).compile()
    assert compiled is not None
    out_params = compiled.output_shardings[0].params
    assert jax.tree.leaves(out_params)[0] == jax.tree.leaves(trainer.param_shardings)[0]
    np.testing.assert_equal(len(jax.tree.leaves(out_params)), len(params))


def test_dit_xl2_imagenet_compiles_fsdp_sharded():
    # The real width (1152, 16 heads, 32x32x4 latents, 1000 classes); two of the 28 blocks.
    cfg = config_lib.load(
        "configs/dit_xl2_imagenet256.yaml", ["data.batch_size=8", "mesh.data=1", "mesh.fsdp=8", "model.args.depth=2"]
    )
    trainer = Trainer(cfg)
    params = jax.tree.leaves(trainer.abstract_state.params)
    block = trainer.abstract_state.params["blocks_0"]
    assert block["attn"]["qkv"]["kernel"].shape == (1152, 3, 16, 72)
    assert "fsdp" in str(block["mlp"]["fc1"]["kernel"].sharding.spec)
    batch = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=trainer.batch_shardings[k])
        for k, v in trainer.task.example_batch(8).items()
    }
    assert batch["x"].shape == (8, 32, 32, 4)
    with trainer.context():
        compiled = trainer.train_step.lower(trainer.abstract_state, batch).compile()
    np.testing.assert_equal(len(jax.tree.leaves(compiled.output_shardings[0].params)), len(params))
