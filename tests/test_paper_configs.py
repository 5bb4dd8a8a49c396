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
