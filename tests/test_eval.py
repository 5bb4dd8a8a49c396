"""Sharded evaluation over a split that is not a multiple of the global batch equals one device."""

import jax
import numpy as np
import pytest
from conftest import tiny_config

from trainers.loop import Trainer


@pytest.mark.slow
def test_sharded_eval_equals_single_device():
    one = Trainer(tiny_config(mesh={"data": 1}, data={"eval_batch_size": 5}), jax.devices()[:1])
    many = Trainer(tiny_config(mesh={"data": 4, "fsdp": 2}, data={"eval_batch_size": 64}))
    assert len(many.task.eval_source()) % 64  # 359 images: the last batch is padded
    params = jax.device_get(one.init(0).params)
    metrics_one, out_one = one.evaluate(params)
    metrics_many, out_many = many.evaluate(jax.device_put(params, many.param_shardings))
    assert len(out_many["label"]) == len(many.task.eval_source())
    np.testing.assert_array_equal(out_one["label"], out_many["label"])
    np.testing.assert_allclose(out_one["loss"], out_many["loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics_one["loss"], metrics_many["loss"], rtol=1e-6)
    # An argmax may differ where the two best logits tie to within the float32 rounding of
    # a sum reduced in another order (FSDP splits the contractions): only those rows may.
    source = one.task.eval_source()
    images = np.stack([one.task.eval_transform(source[i], None)["image"] for i in range(len(source))])
    logits = np.sort(np.asarray(one.task.model.apply({"params": params}, one.task.normalise(images))), axis=-1)
    close = logits[:, -1] - logits[:, -2] < 1e-4 * np.abs(logits).max()
    differ = out_one["prediction"] != out_many["prediction"]
    assert not np.any(differ & ~close), np.flatnonzero(differ & ~close)
    assert abs(metrics_one["accuracy"] - metrics_many["accuracy"]) <= close.mean()
