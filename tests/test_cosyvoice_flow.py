"""CosyVoice's flow decoder against the official MaskedDiffWithXvec (tests/data/make_flow_reference.py):
the encoder, the length regulator, the estimator (a padded batch's rows as upstream gives each
alone) and whole prompted and prompt-free inference within 1e-4; the released configuration's
parameter count; the converter's errors."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT

from jaxmodels.cosyvoice import flow
from jaxmodels.cosyvoice import flow_matching as fm

REFERENCE = ROOT / "tests" / "data" / "flow_reference.npz"


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE) as f:
        arrays = {k: f[k] for k in f.files}
    cfg = flow.FlowConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(str(arrays["config"])).items()}
    )
    state_dict = {k[3:]: v for k, v in arrays.items() if k.startswith("sd/")}
    return cfg, state_dict, arrays


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def test_interpolate_is_torchs_linear():
    x = jnp.arange(4.0)[None, :, None]
    np.testing.assert_allclose(
        flow.interpolate(x, 7)[0, :, 0], [0, 0.357143, 0.928571, 1.5, 2.071429, 2.642857, 3], atol=1e-6
    )
    np.testing.assert_allclose(flow.interpolate(x, 2)[0, :, 0], [0.5, 2.5])  # no antialiasing


def jitted(model, variables):
    """apply(method, *args, **static): the method jitted (op by op, the U-Net takes several times
    its compile time)."""
    return lambda method, *args, **static: jax.jit(lambda *a: model.apply(variables, *a, **static, method=method))(
        *args
    )


def assert_guided_inference_equals(model, variables, ref):
    """The conditions and the guided Euler steps from the reference's noise give its mel, with a
    prompt ("prompt/*") and without ("sft/*")."""
    cfg, apply = model.config, jitted(model, variables)
    for case in ("prompt", "sft"):
        r = {k.split("/")[1]: ref[k] for k in ref if k.startswith(f"{case}/")}
        mu, mask, spks, cond = apply(
            flow.Flow.conditions, r["tokens"], r["prompt_tokens"], r["prompt_feat"], r["embedding"]
        )
        estimator = lambda *a: model.apply(variables, *a, method=lambda m, *b: m.estimator(*b))  # noqa: E731
        mel = jax.jit(lambda z: fm.solve_euler(estimator, z, mask, mu, spks, cond, cfg.cfm))(r["z"])
        mel = mel[:, r["prompt_feat"].shape[1] :]
        assert mel.shape == r["mel"].shape == (1, cfg.mel_frames(r["tokens"].shape[1]), cfg.output_size)
        assert _rel(mel, r["mel"]) < 1e-4, case


def test_equals_upstream(reference):
    cfg, state_dict, ref = reference
    model, variables = flow.Flow(cfg), flow.from_torch(state_dict, cfg)
    apply = jitted(model, variables)

    h = apply(flow.Flow.encode, ref["train/tokens"], ref["train/token_len"])
    assert _rel(h, ref["train/h"]) < 1e-4  # padded rows too, which upstream leaves unzeroed
    feat_len = ref["train/feat_len"]
    mask = (np.arange(feat_len.max())[None] < feat_len[:, None]).astype(np.float32)
    mu = np.asarray(apply(flow.Flow.regulate, ref["train/h"], frames=int(feat_len.max()), mask=mask))
    # The padded row is refined as upstream refines it alone, unpadded (upstream's own padded
    # batch lets the padding into the GroupNorms' statistics and the convolutions' edges).
    assert _rel(mu[0], ref["train/mu"][0]) < 1e-4
    assert _rel(mu[1, : feat_len[1]], ref["train/mu_alone"][0]) < 1e-4
    assert not np.any(mu[1, feat_len[1] :])

    e = {k.split("/")[1]: ref[k] for k in ref if k.startswith("estimator/")}
    v = np.asarray(apply(lambda m, *a: m.estimator(*a), e["x"], e["mask"], e["mu"], e["t"], e["spks"], e["cond"]))
    assert _rel(v[0], e["v"][0]) < 1e-4
    assert _rel(v[1, :16], e["v_alone"][0]) < 1e-4  # the padded row as upstream's estimator gives it alone
    assert not np.any(v[1, 16:])  # padded frames are zero

    assert_guided_inference_equals(model, variables, ref)


def tiny_flow(**fields) -> flow.FlowConfig:
    """One resolution, one block of each kind; ``fields`` override."""
    args = dict(vocab_size=20, input_size=16, output_size=8, spk_embed_dim=4, attention_heads=2, linear_units=16)
    args.update(num_blocks=1, channels=(16,), attention_head_dim=4, n_blocks=1, num_mid_blocks=1, num_heads=2)
    return flow.FlowConfig(**{**args, **fields})


def padded_batch(cfg):
    """Two rows of 9 and 6 tokens, their mels (the longer's length) and x-vectors; init's params."""
    rng = np.random.default_rng(0)
    tokens, token_len = rng.integers(0, cfg.vocab_size, (2, 9)), np.array([9, 6])
    feat_len = np.array([cfg.mel_frames(9), cfg.mel_frames(6)])
    feat = rng.normal(size=(2, feat_len[0], cfg.output_size)).astype(np.float32)
    embedding = rng.normal(size=(2, cfg.spk_embed_dim)).astype(np.float32)
    batch = (tokens, token_len, feat, feat_len, embedding)
    return batch, jax.jit(flow.Flow(cfg).init)(jax.random.key(0), *batch)["params"]


@pytest.mark.slow  # three programs compiled: init, the loss's gradients, guided sampling
def test_training_loss_and_sampling():
    # The training loss, its gradients, and inference.
    cfg = tiny_flow()
    model = flow.Flow(cfg)
    (tokens, token_len, feat, feat_len, embedding), params = padded_batch(cfg)
    loss_fn = lambda p, rng: model.apply(  # noqa: E731
        {"params": p}, rng, tokens, token_len, feat, feat_len, embedding, method=flow.Flow.loss
    )
    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params, jax.random.key(1))
    assert np.isfinite(loss) and loss > 0
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and sum(n > 0 for n in norms) > 0.9 * len(norms)
    sample = jax.jit(lambda *a: model.apply({"params": params}, *a, method=flow.Flow.inference))
    mel = sample(jax.random.key(2), tokens[:1, :5], tokens[1:, :3], feat[:1, :4], embedding[:1])
    assert mel.shape == (1, cfg.mel_frames(5), cfg.output_size) and np.all(np.isfinite(mel))


def test_normalised_flow_models_the_standardised_mel():
    # mel_mean / mel_std (Matcha-TTS's statistics) change units only: the errors are those of the
    # plain flow on (mel - mean) / std, and sampling returns that flow's mel in the given units.
    plain, scaled = tiny_flow(), tiny_flow(mel_mean=-5.0, mel_std=2.0)
    (tokens, token_len, feat, feat_len, embedding), params = padded_batch(plain)
    raw = feat * 2.0 - 5.0
    errors = lambda cfg, f: flow.Flow(cfg).apply(  # noqa: E731
        {"params": params}, jax.random.key(1), tokens, token_len, f, feat_len, embedding, method=flow.Flow.row_errors
    )[0]
    np.testing.assert_allclose(errors(scaled, raw), errors(plain, feat), rtol=1e-5)
    sample = (
        lambda cfg, prompt: flow.Flow(cfg).apply(  # noqa: E731
            {"params": params},
            jax.random.key(2),
            tokens[:1, :5],
            tokens[1:, :3],
            prompt,
            embedding[:1],
            method=flow.Flow.inference,
        )
    )
    np.testing.assert_allclose(sample(scaled, raw[:1, :4]), sample(plain, feat[:1, :4]) * 2.0 - 5.0, atol=1e-4)


def test_prior_loss_is_matchas():
    # prior_loss_weight adds Matcha-TTS's prior loss: half the squared error of the regulated mean
    # against the normalised mel over each row's own frames and the bins; at 0 the loss is upstream's.
    cfg = tiny_flow(mel_mean=-5.0, mel_std=2.0)
    (tokens, token_len, feat, feat_len, embedding), params = padded_batch(cfg)
    raw = feat * 2.0 - 5.0

    def losses(c):
        return flow.Flow(c).apply(
            {"params": params}, jax.random.key(1), tokens, token_len, raw, feat_len, embedding, method=flow.Flow.losses
        )

    def mean(model, tokens, token_len, frames, mask):
        return model.regulate(model.encode(tokens, token_len), frames, mask)

    mask = np.arange(feat.shape[1])[None] < feat_len[:, None]
    mu = flow.Flow(cfg).apply({"params": params}, tokens, token_len, feat.shape[1], jnp.asarray(mask), method=mean)
    expected = 0.5 * np.sum(np.square(mu - feat) * mask[..., None]) / (np.sum(feat_len) * cfg.output_size)
    total, flow_loss, prior_loss = losses(cfg)
    np.testing.assert_allclose(prior_loss, expected, rtol=1e-5)
    np.testing.assert_allclose(total, flow_loss, rtol=1e-6)
    weighted = losses(dataclasses.replace(cfg, prior_loss_weight=0.5))
    np.testing.assert_allclose(weighted, (flow_loss + 0.5 * prior_loss, flow_loss, prior_loss), rtol=1e-5)


def test_prior_start_enters_the_path_at_the_prior_mean():
    # With start_time the flow samples from the path's point between its noise and its regulated
    # mean mu (the prior loss trains mu as the normalised mel) over the later times only; without
    # the prior loss that start is an error.
    cfg = tiny_flow(mel_mean=-5.0, mel_std=2.0, prior_loss_weight=1.0, start_time=0.5)
    (tokens, _, feat, _, embedding), params = padded_batch(cfg)
    model, rng = flow.Flow(cfg), jax.random.key(2)
    args = (tokens[:1, :5], tokens[1:, :3], feat[1:, :4] * 2.0 - 5.0, embedding[:1])
    got = model.apply({"params": params}, rng, *args, 0.667, method=flow.Flow.inference)

    def by_hand(m, tokens, prompt_tokens, prompt_mel, embedding):
        mu, mask, spks, cond = m.conditions(tokens, prompt_tokens, (prompt_mel + 5.0) / 2.0, embedding)
        z = jax.random.normal(rng, mu.shape) * 0.667
        y = (1 - (1 - cfg.cfm.sigma_min) * 0.5) * z + 0.5 * mu
        return fm.solve_euler(m.estimator, y, mask, mu, spks, cond, cfg.cfm, 0.5)[:, 4:] * 2.0 - 5.0

    np.testing.assert_allclose(got, model.apply({"params": params}, *args, method=by_hand), atol=1e-5)
    with pytest.raises(ValueError, match="start_time 0.5 needs prior_loss_weight > 0"):
        tiny_flow(start_time=0.5)


def test_released_configuration_and_errors(reference):
    # flow.pt of CosyVoice-300M: 1185 tensors, 104,874,752 parameters.
    assert flow.param_count(flow.config("flow_cosyvoice_300m")) == 104_874_752
    assert flow.param_count(flow.config("flow_cosyvoice2")) == 112_549_360  # as upstream's module counts it
    assert flow.config("flow_cosyvoice_300m").mel_frames(50) == 86
    with pytest.raises(ValueError, match="unknown flow model 'flow_v9'; valid: flow_cosyvoice_300m"):
        flow.config("flow_v9")
    cfg, state_dict, _ = reference
    missing_layer = {
        k: v for k, v in state_dict.items() if k != "decoder.estimator.mid_blocks.1.1.0.attn1.to_q.weight"
    }
    with pytest.raises(ValueError, match=r"mid_blocks.\*.1.0.attn1.to_q.weight: layers \[0\], the model has 2"):
        flow.from_torch(missing_layer, cfg)
    wrong = {
        **state_dict,
        "length_regulator.model.12.weight": np.zeros((80, 80, 3), np.float32),
        "extra.bias": np.zeros(1),
    }
    del wrong["encoder.after_norm.bias"]
    with pytest.raises(
        ValueError, match=r"(?s)unexpected keys: extra.bias.*missing parameters: encoder/after_norm/bias.*model.12"
    ):
        flow.from_torch(wrong, cfg)


def test_dit_estimator_is_exact_under_padding_and_learns():
    """The DiT estimator (flow.estimator: dit): a padded row's velocity at its own frames is the
    row's alone; trained on one batch, the flow's loss falls; the image DiT's blocks unchanged."""
    import optax

    cfg = tiny_flow(estimator="dit", dit_hidden=32, dit_depth=2, dit_heads=2, dit_mlp_ratio=2.0)
    model = flow.Flow(cfg)
    (tokens, token_len, feat, feat_len, embedding), params = padded_batch(cfg)
    rng = np.random.default_rng(1)
    # DiT's zero initialisation would make every velocity 0: perturb the parameters.
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(5), len(leaves))
    params = treedef.unflatten([p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])

    estimator = lambda *a: model.apply({"params": params}, *a, method=lambda m, *b: m.estimator(*b))  # noqa: E731
    x, mu, cond = (rng.normal(size=(2, 20, 8)).astype(np.float32) for _ in range(3))
    mask = (np.arange(20)[None] < np.array([[20], [13]])).astype(np.float32)
    t, spks = np.array([0.3, 0.7], np.float32), rng.normal(size=(2, 8)).astype(np.float32)
    both = estimator(x, mask, mu, t, spks, cond)
    alone = estimator(x[1:, :13], mask[1:, :13], mu[1:, :13], t[1:], spks[1:], cond[1:, :13])
    np.testing.assert_allclose(both[1, :13], alone[0], rtol=1e-5, atol=1e-5)
    assert not np.any(np.asarray(both[1, 13:])) and float(jnp.abs(both).max()) > 0

    tx = optax.adam(3e-3)
    loss_fn = lambda p, key: model.apply(  # noqa: E731
        {"params": p}, key, tokens, token_len, feat, feat_len, embedding, method=flow.Flow.loss
    )

    @jax.jit
    def step(p, opt, key):
        loss, grads = jax.value_and_grad(loss_fn)(p, key)
        updates, opt = tx.update(grads, opt, p)
        return optax.apply_updates(p, updates), opt, loss

    opt, losses = tx.init(params), []
    for i in range(30):
        params, opt, loss = step(params, opt, jax.random.key(i % 2))
        losses.append(float(loss))
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses
    with pytest.raises(ValueError, match="flow estimator 'wavenet': 'unet' or 'dit'"):
        flow.init_shapes(dataclasses.replace(cfg, estimator="wavenet"))


@pytest.fixture(scope="module")
def reference2():
    """CosyVoice 2's flow (tests/data/make_flow2_reference.py): its weights drawn again from the seed."""
    from helpers.seeded_weights import seeded_state_dict

    with np.load(ROOT / "tests" / "data" / "flow2_reference.npz") as f:
        ref = dict(f)
    cfg = flow.FlowConfig(**json.loads(str(ref["config"])))
    state_dict = seeded_state_dict([(k, tuple(s)) for k, s in json.loads(str(ref["shapes"]))])
    return cfg, state_dict, ref


def test_cosyvoice2_flow_equals_upstream(reference2):
    """CausalMaskedDiffWithXvec: the upsampling encoder's frames of a padded batch and the causal
    estimator's velocity, each without and with streaming chunks, and the whole guided inference
    with a prompt and without (the reference's fixed noise fed in), within 1e-4."""
    cfg, state_dict, ref = reference2
    model, variables = flow.Flow(cfg), flow.from_torch(state_dict, cfg)
    assert flow.param_count(cfg) == int(ref["count"])
    apply = jitted(model, variables)
    for name, streaming in (("h", False), ("h_stream", True)):
        h = apply(flow.Flow.encode, ref["train/tokens"], ref["train/token_len"], streaming=streaming)
        for row, n in enumerate(ref["train/token_len"]):  # the valid frames (upstream leaves padding as it is)
            assert _rel(h[row, : 2 * n], ref[f"train/{name}"][row, : 2 * n]) < 1e-4, name
    e = {k.split("/")[1]: ref[k] for k in ref if k.startswith("estimator/")}
    for name, streaming in (("v", False), ("v_stream", True)):
        inputs = [e[k] for k in ("x", "mask", "mu", "t", "spks", "cond")]
        v = apply(lambda m, *a: m.estimator(*a, streaming=streaming), *inputs)
        assert _rel(v, e[name]) < 1e-4, name
    assert_guided_inference_equals(model, variables, ref)


@pytest.mark.slow  # the loss and its gradients compiled
def test_cosyvoice2_flow_trains_on_token_aligned_mels():
    """The training loss of the causal flow (half the batches streaming) and its gradients; a mel
    whose frames do not match the tokens' is an error naming both."""
    cfg = tiny_flow(vocab_size=20, token_mel_ratio=2, input_frame_rate=25, channels=(16,), causal=True, chunk_size=2)
    cfg = dataclasses.replace(cfg, input_size=16)
    model = flow.Flow(cfg)
    rng = np.random.default_rng(0)
    tokens, token_len = rng.integers(0, 20, (2, 9)), np.array([9, 6])
    feat = rng.normal(size=(2, 18, cfg.output_size)).astype(np.float32)
    feat_len, embedding = 2 * token_len, rng.normal(size=(2, cfg.spk_embed_dim)).astype(np.float32)
    params = jax.jit(model.init)(jax.random.key(0), tokens, token_len, feat, feat_len, embedding)["params"]
    loss_fn = lambda p, key: model.apply(  # noqa: E731
        {"params": p}, key, tokens, token_len, feat, feat_len, embedding, method=flow.Flow.loss
    )
    losses = [float(jax.jit(loss_fn)(params, jax.random.key(i))) for i in range(2)]
    assert all(np.isfinite(losses)) and min(losses) > 0
    grads = jax.jit(jax.grad(loss_fn))(params, jax.random.key(0))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    with pytest.raises(ValueError, match="16 mel frames for 9 tokens; the encoder makes 18"):
        model.apply(
            {"params": params},
            jax.random.key(0),
            tokens,
            token_len,
            feat[:, :16],
            feat_len,
            embedding,
            method=flow.Flow.loss,
        )


def test_estimator_initialised_as_upstreams():
    """ConditionalDecoder.initialize_weights: Conv1d and Linear weights kaiming-normal (ReLU's
    gain), biases zero; the transposed convolution of Upsample1D keeps torch's default."""
    model = flow.ConditionalDecoder(8, (64, 64), n_blocks=1, num_mid_blocks=1, num_heads=2, attention_head_dim=32)
    x = jnp.zeros((2, 16, 8))
    params = jax.jit(model.init)(jax.random.key(0), x, jnp.ones((2, 16)), x, jnp.zeros(2), jnp.zeros((2, 8)), x)
    params = nn.meta.unbox(params["params"])
    down = params["down_blocks_0"]
    for kernel, fan_in in [
        (down["resnet"]["res_conv"]["kernel"], 32),
        (down["resnet"]["block1"]["block_0"]["kernel"], 3 * 32),
        (down["transformer_0"]["attn1_to_q"]["kernel"], 64),
        (params["time_mlp_linear_2"]["kernel"], 256),
    ]:
        np.testing.assert_allclose(np.std(kernel), np.sqrt(2 / fan_in), rtol=0.1)
    assert not np.any(down["resnet"]["res_conv"]["bias"])
    upsample = np.asarray(params["up_blocks_0_2_conv"]["kernel"])  # (4, 64 in, 64 out): torch's fan in 64 x 4
    assert np.max(np.abs(upsample)) <= 1 / np.sqrt(256)
    np.testing.assert_allclose(np.std(upsample), 1 / np.sqrt(3 * 256), rtol=0.1)
