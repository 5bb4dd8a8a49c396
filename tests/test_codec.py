"""EnCodec against the official encodec package's outputs in ../shared/fixtures/encodec;
streaming, the RVQ's training updates, and bad input."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmodels.codec as codec_lib
from jaxmodels.codec import Encodec, EncodecConfig, from_torch, quantization
from jaxmodels.nn import load_state_dict

CASES = ["causal_mono", "noncausal_stereo_segments"]


def fixture_dir(name):
    from conftest import FIXTURES

    d = FIXTURES / "encodec" / name
    if not d.is_dir():
        pytest.skip(f"EnCodec fixtures not found at {d}")
    return d


def load_case(name):
    d = fixture_dir(name)
    config = json.loads((d / "config.json").read_text())
    return from_torch(load_state_dict(str(d / "weights.safetensors")), config), config, np.load(d / "io.npz")


def channels_last(a):
    return np.swapaxes(a, -1, -2)


@pytest.fixture(scope="module", params=CASES)
def case(request):
    return load_case(request.param)


def test_codes_exact_and_audio_within_tolerance(case):
    codec, config, io = case
    x = channels_last(io["x"])
    for bw in config["target_bandwidths"]:
        frames = codec.encode(x, bw)
        assert len(frames) == sum(k.startswith(f"codes_bw{bw}_") for k in io.files)
        for s, (codes, scale) in enumerate(frames):
            np.testing.assert_array_equal(np.asarray(codes), io[f"codes_bw{bw}_seg{s}"])
            if config["normalize"]:
                np.testing.assert_allclose(np.asarray(scale), io[f"scale_bw{bw}_seg{s}"], rtol=1e-5)
            else:
                assert scale is None
        ref = channels_last(io[f"decoded_bw{bw}"])
        out = np.asarray(codec.decode(frames))
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def test_encoder_output_and_rvq_residuals(x64):
    codec, config, io = load_case("causal_mono")
    emb = codec.model.apply({"params": codec.params}, channels_last(io["x"]), method=Encodec.encode_latent)
    ref = channels_last(io["encoder_out"])
    assert np.abs(np.asarray(emb) - ref).max() <= 1e-5 * np.abs(ref).max()
    embed = codec.codebooks["embed"]
    codes = quantization.encode(embed, emb, config["n_q"])
    residual = emb
    for k in range(config["n_q"]):
        np.testing.assert_allclose(residual, channels_last(io["rvq_residuals"][k]), atol=1e-5)
        residual = residual - embed[k][codes[k]]
    np.testing.assert_allclose(quantization.decode(embed, codes), channels_last(io["quantized"]), atol=1e-5)


def test_official_configs_have_the_published_counts_and_rates():
    official = json.loads((fixture_dir(".") / "official_configs.json").read_text())
    for name, ref in official.items():
        cfg = codec_lib.config(name)
        assert (cfg.sample_rate, cfg.channels, cfg.frame_rate, cfg.n_q, cfg.bins) == (
            ref["sample_rate"],
            ref["channels"],
            ref["frame_rate"],
            ref["n_q"],
            ref["bins"],
        )
        assert list(cfg.target_bandwidths) == ref["bandwidths"]
        assert (cfg.segment, cfg.overlap, cfg.normalize) == (ref["segment"], ref["overlap"], ref["normalize"])
        shapes = jax.eval_shape(
            Encodec(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, cfg.hop_length * 8, cfg.channels))
        )["params"]
        abstract = codec_lib.Codec(cfg, {"params": shapes, "codebooks": {"embed": None}})
        assert abstract.param_count() == ref["params"]
    small = codec_lib.create("encodec_24khz", n_filters=2, dimension=4, ratios=(2, 2), lstm=1, n_q=4)  # narrowed
    assert small.codebooks["embed"].shape == (4, 1024, 4) and not bool(small.codebooks["inited"].any())
    ((codes, scale),) = small.encode(np.zeros((1, 960, 1), np.float32), 1.5)
    assert codes.shape == (1, 1, 240) and scale is None  # hop 4: 6000 frames/s of 10 bits, one codebook
    cfg = codec_lib.config("encodec_24khz")
    # codebooks = bandwidth / (log2(bins) x frame rate): 1.5 kbps = 2 codebooks of 10 bits at 75 Hz.
    assert [cfg.num_quantizers(bw) for bw in cfg.target_bandwidths] == [2, 4, 8, 16, 32]


def test_streaming_equals_whole_signal():
    codec, config, io = load_case("causal_mono")
    hop = codec.config.hop_length
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, hop * 30 + 5, 1)).astype(np.float32)
    bw = config["target_bandwidths"][-1]
    ((whole, _),) = codec.encode(x, bw)
    enc = codec.streaming_encoder(bw)
    cuts = [0, enc.min_first_chunk, enc.min_first_chunk + hop, hop * 20, x.shape[1]]
    streamed = np.concatenate([np.asarray(enc(x[:, a:b])) for a, b in zip(cuts[:-1], cuts[1:])], axis=2)
    np.testing.assert_array_equal(streamed, np.asarray(whole))

    full = np.asarray(codec.decode([(whole, None)]))
    dec = codec.streaming_decoder()
    frames = [0, dec.min_first_chunk, dec.min_first_chunk + 1, 20, whole.shape[2]]
    out = np.concatenate([np.asarray(dec(whole[:, :, a:b])) for a, b in zip(frames[:-1], frames[1:])], axis=1)
    assert out.shape == full.shape
    assert np.abs(out - full).max() <= 1e-5 * np.abs(full).max()


def test_streaming_rejects_what_it_cannot_do():
    codec, config, _ = load_case("causal_mono")
    hop = codec.config.hop_length
    enc = codec.streaming_encoder()
    with pytest.raises(ValueError, match="first chunk"):
        enc(np.zeros((1, hop, 1), np.float32))
    enc(np.zeros((1, enc.min_first_chunk + 3, 1), np.float32))  # not a multiple of the hop: the last chunk
    with pytest.raises(ValueError, match="stream has ended"):
        enc(np.zeros((1, hop, 1), np.float32))
    stereo, _, _ = load_case("noncausal_stereo_segments")
    with pytest.raises(ValueError, match="causal"):
        stereo.streaming_encoder()


def test_bad_input_is_named():
    codec, config, io = load_case("causal_mono")
    with pytest.raises(ValueError, match=r"\(batch, time, 1\)"):
        codec.encode(np.zeros((1, 2, 400), np.float32))
    with pytest.raises(ValueError, match="bandwidth 5.0"):
        codec.encode(np.zeros((1, 400, 1), np.float32), 5.0)
    state_dict = load_state_dict(str(fixture_dir("causal_mono") / "weights.safetensors"))
    with pytest.raises(ValueError, match="shape mismatches"):
        from_torch(state_dict, {**config, "n_filters": 8})
    with pytest.raises(ValueError, match="n_q=8"):
        from_torch(state_dict, {**config, "n_q": 8})
    with pytest.raises(ValueError, match="unknown EnCodec config key"):
        EncodecConfig.from_dict({**config, "n_filter": 4})
    with pytest.raises(ValueError, match="causal"):
        codec_lib.create("encodec_24khz", norm="time_group_norm").param_count()


def _upstream_codebook_step(embed, embed_avg, cluster_size, x, decay=0.99, eps=1e-5):
    """EuclideanCodebook.forward's training update in numpy (encodec/quantization/core_vq.py)."""
    dist = -((x**2).sum(1, keepdims=True) - 2 * x @ embed.T + (embed**2).sum(1))
    ind = dist.argmax(-1)
    onehot = np.eye(embed.shape[0])[ind]
    cluster_size = decay * cluster_size + (1 - decay) * onehot.sum(0)
    embed_avg = decay * embed_avg + (1 - decay) * (x.T @ onehot).T
    n = cluster_size.sum()
    smoothed = (cluster_size + eps) / (n + embed.shape[0] * eps) * n
    return ind, embed_avg / smoothed[:, None], embed_avg, cluster_size


def test_rvq_training_update_as_upstream(x64):
    rng = np.random.default_rng(0)
    n_q, bins, dim = 3, 8, 4
    state = quantization.init_state(jax.random.PRNGKey(0), n_q, bins, dim, kmeans_init=False)
    state["cluster_size"] = jnp.full((n_q, bins), 5.0)  # alive: no dead-code replacement in this step
    x = jnp.asarray(rng.standard_normal((2, 16, dim)), jnp.float32)
    quantized, codes, commit, new, layers = quantization.quantize_train(state, x, 2, jax.random.PRNGKey(1))
    residual = np.asarray(x).reshape(-1, dim)
    q_sum = 0
    for k in range(2):
        e = np.asarray(state["embed"][k])
        ind, embed, embed_avg, cs = _upstream_codebook_step(e, e, np.full(bins, 5.0), residual)
        np.testing.assert_array_equal(np.asarray(codes[k]).reshape(-1), ind)
        np.testing.assert_allclose(new["embed"][k], embed, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(new["cluster_size"][k], cs, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(layers[k]).reshape(-1, dim), e[ind], atol=1e-6)
        q_sum = q_sum + e[ind]
        residual = residual - e[ind]
    # Quantizer dropout: the third codebook neither quantized nor changed.
    for name in state:
        np.testing.assert_array_equal(new[name][2], state[name][2])
    np.testing.assert_array_equal(layers[2], 0.0)
    np.testing.assert_allclose(np.asarray(quantized).reshape(-1, dim), q_sum, atol=1e-5)
    # Straight-through over the whole stack: d quantized / d x is the identity.
    grad = jax.grad(lambda x: jnp.sum(quantization.quantize_train(state, x, 2, jax.random.PRNGKey(1))[0] * 3.0))(x)
    np.testing.assert_allclose(grad, 3.0)
    assert float(commit) > 0


def test_padding_frames_neither_move_the_codebooks_nor_count():
    """quantize_train's valid mask: the update, codes and commitment of a padded batch are those
    of its valid frames alone, padding far from them and drawn from by neither k-means, the EMA
    nor the dead codes' replacements."""
    rng = np.random.default_rng(0)
    real = jnp.asarray(rng.standard_normal((1, 24, 4)), jnp.float32)
    padded = jnp.concatenate([real, jnp.full((1, 8, 4), 50.0)], axis=1)
    valid = jnp.arange(32)[None] < 24
    for kmeans_init in (True, False):  # codes drawn by k-means; all dead at first, so all drawn anew
        state = quantization.init_state(jax.random.PRNGKey(0), 1, 8, 4, kmeans_init=kmeans_init)
        new = quantization.quantize_train(state, padded, 1, jax.random.PRNGKey(1), valid=valid)[3]
        assert np.abs(np.asarray(new["embed"])).max() < 10  # no code at the padding
    # Without replacements: the EMA counts only the valid frames, codes and loss as theirs alone.
    state = quantization.init_state(jax.random.PRNGKey(0), 1, 8, 4, kmeans_init=False)
    update = functools.partial(quantization.quantize_train, threshold_ema_dead_code=0.0)
    _, codes, commit, new, _ = update(state, padded, 1, jax.random.PRNGKey(1), valid=valid)
    _, alone_codes, alone_commit, alone, _ = update(state, real, 1, jax.random.PRNGKey(1))
    np.testing.assert_allclose(new["cluster_size"].sum(), 0.01 * 24, rtol=1e-5)
    np.testing.assert_allclose(new["embed"], alone["embed"], rtol=1e-5)
    np.testing.assert_array_equal(codes[:, :, :24], alone_codes)
    np.testing.assert_allclose(commit, alone_commit, rtol=1e-5)


def test_kmeans_init_and_dead_code_replacement(x64):
    rng = np.random.default_rng(0)
    n_q, bins, dim = 2, 4, 2
    centres = np.array([[5, 5], [-5, 5], [5, -5], [-5, -5]], np.float32)
    x = centres[rng.integers(0, 4, 256)] + 0.01 * rng.standard_normal((256, dim)).astype(np.float32)
    state = quantization.init_state(jax.random.PRNGKey(0), n_q, bins, dim, kmeans_init=True)
    _, _, _, new, _ = quantization.quantize_train(
        state, jnp.asarray(x)[None], 1, jax.random.PRNGKey(3), kmeans_iters=10
    )
    assert bool(new["inited"][0]) and not bool(new["inited"][1])
    found = np.asarray(new["embed"][0])
    assert np.abs(centres[:, None] - found[None]).sum(-1).min(1).max() < 0.1  # a code on each of the four clusters
    # A code nothing is assigned to decays under the threshold and is replaced by a batch vector.
    state = {**new, "embed": new["embed"].at[0, 0].set(100.0), "cluster_size": new["cluster_size"].at[0, 0].set(2.0)}
    _, _, _, after, _ = quantization.quantize_train(state, jnp.asarray(x)[None], 1, jax.random.PRNGKey(3))
    replaced = np.asarray(after["embed"][0, 0])
    assert np.min(np.abs(x - replaced).sum(-1)) < 1e-5
