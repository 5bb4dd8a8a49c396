"""wav2vec 2.0 and HuBERT encoders against transformers (tests/data/make_ssl_reference.py)."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import ROOT

from jaxmodels import ssl


@pytest.fixture(scope="module")
def reference():
    with np.load(ROOT / "tests" / "data" / "ssl_reference.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("case", ["hubert_base_layout", "wav2vec2_large_layout"])
def test_every_hidden_state_equals_transformers_on_a_padded_batch(reference, case):
    ref = reference
    config = json.loads(str(ref[f"{case}/config"]))
    state_dict = {k.split("/sd/")[1]: v for k, v in ref.items() if k.startswith(f"{case}/sd/")}
    model, variables = ssl.from_transformers(state_dict, config)
    paddings = 1.0 - ref["attention_mask"].astype(np.float32)
    hidden = jax.jit(lambda v, x, p: model.apply(v, x, p, method="hidden_states"))(variables, ref["audio"], paddings)
    expected = [ref[f"{case}/hidden_{i}"] for i in range(config["num_hidden_layers"] + 1)]
    assert len(hidden) == len(expected)
    frames = ssl.output_lengths(np.array([1600, 1203]), config["conv_kernel"], config["conv_stride"])
    for i, (ours, theirs) in enumerate(zip(hidden, expected)):
        assert ours.shape == theirs.shape
        for row, n in enumerate(frames):  # the valid frames of the full and the padded utterance
            scale = np.abs(theirs[row, :n]).max()
            np.testing.assert_allclose(ours[row, :n], theirs[row, :n], rtol=1e-4, atol=1e-4 * scale, err_msg=f"{i}")
    last = model.apply(variables, ref["audio"], paddings)
    np.testing.assert_allclose(last[1, : frames[1]], ref[f"{case}/last"][1, : frames[1]], rtol=1e-4, atol=1e-4)
    half = model.clone(dtype=jax.numpy.bfloat16).apply(variables, ref["audio"], paddings)
    assert np.abs(np.float32(half[0]) - ref[f"{case}/last"][0]).max() < 0.1 * np.abs(ref[f"{case}/last"][0]).max()


def test_named_configs_have_transformers_parameter_counts(reference):
    counts = json.loads(str(reference["param_counts"]))
    with np.load(ROOT / "tests" / "data" / "w2v_bert_reference.npz") as f:
        counts["w2v_bert_2"] = int(f["param_count"])
    assert counts["hubert_base"] == 94_371_712 and counts["hubert_xlarge"] == 962_497_408
    for name in ssl.VARIANTS:
        assert ssl.param_count(ssl.create(name)) == counts[name], name


def test_a_checkpoint_of_another_model_is_named(reference):
    config = json.loads(str(reference["hubert_base_layout/config"]))
    state_dict = {k.split("/sd/")[1]: v for k, v in reference.items() if k.startswith("hubert_base_layout/sd/")}
    with_head = {**state_dict, "projector.weight": np.zeros((5, 32), np.float32)}  # a classifier's: not the encoder's
    with pytest.raises(ValueError, match=r"unexpected keys: projector.weight \(-> projector/kernel\)"):
        ssl.from_transformers(with_head, config)
    with pytest.raises(ValueError, match=r"lm_head.weight: checkpoint \(32, 5\) vs model \(32, 9\)"):
        ssl.from_transformers(
            {**state_dict, "lm_head.weight": np.zeros((5, 32), np.float32)}, {**config, "vocab_size": 9}
        )
    del state_dict["encoder.layers.1.final_layer_norm.bias"]
    with pytest.raises(ValueError, match=r"encoder.layers.\*.final_layer_norm.bias: layers \[0\], the model has 2"):
        ssl.from_transformers(state_dict, config)
    with pytest.raises(ValueError, match="model_type 'bert': expected hubert, wav2vec2 or wav2vec2-bert"):
        ssl.from_transformers(state_dict, {**config, "model_type": "bert"})


def test_a_ctc_checkpoint_is_the_encoder_and_its_head(reference):
    """HubertForCTC's state_dict: the encoder's last hidden state through lm_head (transformers'
    logits in eval), the valid frames of each row beside."""
    config = {**json.loads(str(reference["hubert_base_layout/config"])), "vocab_size": 9}
    state_dict = {k.split("/sd/")[1]: v for k, v in reference.items() if k.startswith("hubert_base_layout/sd/")}
    rng = np.random.default_rng(0)
    head = {"lm_head.weight": rng.standard_normal((9, 32)), "lm_head.bias": rng.standard_normal(9)}
    head = {k: v.astype(np.float32) for k, v in head.items()}
    prefixed = {f"hubert.{k}": v for k, v in state_dict.items()}
    model, variables = ssl.from_transformers({**prefixed, **head}, config)
    assert isinstance(model, ssl.SSLForCTC) and model.vocab_size == 9
    paddings = 1.0 - reference["attention_mask"].astype(np.float32)
    logits, frames = jax.jit(model.apply)(variables, reference["audio"], paddings)
    assert list(frames) == list(
        ssl.output_lengths(np.array([1600, 1203]), config["conv_kernel"], config["conv_stride"])
    )
    last = reference["hubert_base_layout/last"]
    expected = last @ head["lm_head.weight"].T + head["lm_head.bias"]
    np.testing.assert_allclose(logits[0], expected[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["hubert_base_layout", "wav2vec2_large_layout"])
def test_an_encoder_exports_to_transformers(reference, case):
    """to_transformers gives back the state_dict and config transformers loads, strictly."""
    config = json.loads(str(reference[f"{case}/config"]))
    state_dict = {k.split("/sd/")[1]: v for k, v in reference.items() if k.startswith(f"{case}/sd/")}
    model, variables = ssl.from_transformers(state_dict, config)
    exported, exported_config = ssl.to_transformers(model, variables, config["model_type"])
    assert exported.keys() == state_dict.keys()
    for key, value in state_dict.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config_class = transformers.AutoConfig.for_model(exported_config.pop("model_type"), **exported_config)
    upstream = transformers.AutoModel.from_config(config_class).eval()
    upstream.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    with torch.no_grad():
        last = upstream(torch.from_numpy(reference["audio"][:1])).last_hidden_state.numpy()
    np.testing.assert_allclose(last[0], model.apply(variables, reference["audio"][:1])[0], rtol=1e-4, atol=1e-4)


def test_span_masks_as_fairseq_draws_them():
    """Spans of mask_length inside each row's frames; int(p * length / L + u) of them (u shared),
    at least min_masks, none where a row is shorter than a span."""
    lengths = np.array([100, 60, 5])
    draw = jax.jit(ssl.span_mask, static_argnums=(2, 3, 4, 5))
    for seed in range(20):
        mask = np.asarray(draw(jax.random.PRNGKey(seed), lengths, 100, 0.65, 10, 2))
        assert not mask[2].any()
        for row, n in enumerate(lengths[:2]):
            assert not mask[row, n:].any()
            runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], mask[row].astype(int), [0]]))))[::2]
            assert (runs >= 10).all() and 10 <= mask[row].sum() <= 10 * (int(0.65 * n / 10) + 1)
    frac = np.mean(
        [np.asarray(draw(jax.random.PRNGKey(s), np.array([400]), 400, 0.08, 10, 0)).mean() for s in range(50)]
    )
    assert 0.07 < frac <= 0.08  # 3.2 spans of 10 frames on average: 8% of 400, a little less where they overlap


def test_hubert_prediction_head_and_loss(reference):
    config = json.loads(str(reference["hubert_base_layout/config"]))
    state_dict = {k.split("/sd/")[1]: v for k, v in reference.items() if k.startswith("hubert_base_layout/sd/")}
    encoder, variables = ssl.from_transformers(state_dict, config)
    model = ssl.HubertPretraining(encoder, num_classes=7, final_dim=8)
    audio = reference["audio"][:1]
    params = model.init(jax.random.PRNGKey(0), audio)["params"]
    params = {**params, "encoder": variables["params"]}
    mask = np.zeros((1, 79), bool)
    mask[0, 10:30] = True
    apply = jax.jit(lambda p, m: model.apply({"params": p}, audio, None, m)[0])
    logits = apply(params, mask)
    assert logits.shape == (1, 79, 7) and np.abs(logits).max() <= 10.0 + 1e-5  # cosines / 0.1
    unmasked = apply(params, np.zeros_like(mask))
    assert not np.allclose(logits[0, 10:30], unmasked[0, 10:30])  # the masked frames see the mask embedding
    targets = np.array(logits.argmax(-1))
    targets[0, 10:15] = (targets[0, 10:15] + 1) % 7
    valid = np.ones((1, 79), bool)
    loss, metrics = ssl.hubert_loss(logits, targets, mask, valid)
    assert metrics["masked_accuracy"] == pytest.approx(0.75) and loss == metrics["masked_loss"]
    grads = jax.jit(jax.grad(lambda p: ssl.hubert_loss(apply(p, mask), targets, mask, valid)[0]))(params)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    assert np.abs(grads["encoder"]["masked_spec_embed"]).sum() > 0


def test_wav2vec2_pretraining_equals_transformers(reference):
    """Wav2Vec2ForPreTraining's projections, perplexity and losses (eval: the quantizer's argmax)
    on a padded batch, given its masked spans and distractors."""
    ref = {k.split("/", 1)[1]: v for k, v in reference.items() if k.startswith("pretraining/")}
    config = json.loads(str(ref["config"]))
    state_dict = {k[3:]: v for k, v in ref.items() if k.startswith("sd/")}
    model, variables = ssl.from_transformers(state_dict, config)
    assert isinstance(model, ssl.Wav2Vec2Pretraining)
    paddings = 1.0 - reference["attention_mask"].astype(np.float32)
    mask = ref["mask"].astype(bool)
    outputs = jax.jit(model.apply)(variables, reference["audio"], paddings, mask)
    frames = ssl.output_lengths(np.array([1600, 1203]), config["conv_kernel"], config["conv_stride"])
    for ours, theirs in (("predicted", "projected_states"), ("targets", "projected_quantized_states")):
        for row, n in enumerate(frames):
            np.testing.assert_allclose(outputs[ours][row, :n], ref[theirs][row, :n], rtol=1e-4, atol=1e-5)
    assert float(outputs["perplexity"]) == pytest.approx(float(ref["codevector_perplexity"]), rel=1e-5)
    t = mask.shape[1]
    negatives = ref["negatives"] - (np.arange(2) * t)[:, None, None]  # transformers' indices count the batch
    groups = config["num_codevector_groups"] * config["num_codevectors_per_group"]
    loss, metrics = ssl.wav2vec2_loss(outputs, negatives, mask, groups, penalty=0.0)
    n = mask.sum()
    assert float(metrics["contrastive_loss"]) * n == pytest.approx(float(ref["contrastive_loss"]), rel=1e-4)
    assert float(metrics["diversity_loss"]) * n == pytest.approx(float(ref["diversity_loss"]), rel=1e-4)
    assert float(loss) * n == pytest.approx(float(ref["loss"]), rel=1e-4)
    hidden = model.apply(variables, reference["audio"], paddings, method="hidden_states")
    assert len(hidden) == config["num_hidden_layers"] + 1


def test_wav2vec2_training_terms():
    """Distractors are other masked frames of the same row; the Gumbel quantizer's straight-through
    sample lets the gradient reach the code vectors, the features' scaled gradient the convolutions."""
    mask = np.zeros((2, 40), bool)
    mask[0, 3:20] = True
    mask[1, 30:34] = True
    negatives = np.asarray(jax.jit(ssl.sample_negatives, static_argnums=2)(jax.random.PRNGKey(0), mask, 50))
    for row in range(2):
        for t in np.flatnonzero(mask[row]):
            assert mask[row, negatives[row, t]].all() and (negatives[row, t] != t).all()
    assert len(np.unique(negatives[1, 30])) == 3  # all three others drawn
    encoder = ssl.SSLEncoder(
        32, 2, 4, 37, (16, 16, 16), (10, 3, 3), (5, 2, 2), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4
    )
    model = ssl.Wav2Vec2Pretraining(encoder, 2, 7, 12, 10)
    audio = np.random.default_rng(0).standard_normal((2, 820)).astype(np.float32)  # 40 frames
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), audio, None, mask))["params"]

    def loss(p):
        outputs = model.apply({"params": p}, audio, None, mask, 2.0, jax.random.PRNGKey(1))
        return ssl.wav2vec2_loss(outputs, negatives, mask, 14)[0]

    grads = jax.jit(jax.grad(loss))(params)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    assert np.abs(grads["quantizer"]["codevectors"]).sum() > 0
    assert np.abs(grads["encoder"]["feature_extractor"]["conv_layers_0_conv"]["kernel"]).sum() > 0


FAIRSEQ_NAMES = [  # transformers' names -> fairseq's (fairseq/models/wav2vec/wav2vec2.py, hubert/hubert.py)
    (r"^(wav2vec2|hubert)\.", ""),
    (r"^masked_spec_embed$", "mask_emb"),
    (r"conv_layers\.(\d+)\.conv\.", r"conv_layers.\1.0."),
    (r"feature_projection\.layer_norm\.", "layer_norm."),
    (r"feature_projection\.projection\.", "post_extract_proj."),
    (r"pos_conv_embed\.conv\.parametrizations\.weight\.original0", "pos_conv.0.weight_g"),
    (r"pos_conv_embed\.conv\.parametrizations\.weight\.original1", "pos_conv.0.weight_v"),
    (r"pos_conv_embed\.conv\.bias", "pos_conv.0.bias"),
    (r"\.attention\.", ".self_attn."),
    (r"^(encoder\.layers\.\d+)\.layer_norm\.", r"\1.self_attn_layer_norm."),
    (r"feed_forward\.intermediate_dense", "fc1"),
    (r"feed_forward\.output_dense", "fc2"),
    (r"^quantizer\.codevectors$", "quantizer.vars"),
    (r"^project_hid\.", "final_proj."),
]


def fairseq_checkpoint(path, state_dict, config, **layout):
    """A fairseq-layout checkpoint file of a transformers state_dict: keys renamed, the settings
    under cfg["model"] (Hydra-era) or args (argparse-era), a pickled fairseq Dictionary beside."""
    import argparse
    import re
    import sys
    import types

    import torch

    layer_mode = config["feat_extract_norm"] == "layer"
    renamed = {}
    for key, value in state_dict.items():
        for pattern, name in FAIRSEQ_NAMES:
            key = re.sub(pattern, name, key)
        norm = re.match(r"^(feature_extractor\.conv_layers\.(\d+))\.layer_norm\.(.+)$", key)
        if norm:
            key = f"{norm[1]}.2.1.{norm[3]}" if layer_mode else f"{norm[1]}.2.{norm[3]}"
        renamed[key] = torch.from_numpy(np.asarray(value))
    layers = " + ".join(f"[{t}]" for t in zip(config["conv_dim"], config["conv_kernel"], config["conv_stride"]))
    settings = {
        "extractor_mode": "layer_norm" if layer_mode else "default",
        "conv_feature_layers": layers,
        "encoder_layers": config["num_hidden_layers"],
        "encoder_embed_dim": config["hidden_size"],
        "encoder_ffn_embed_dim": config["intermediate_size"],
        "encoder_attention_heads": config["num_attention_heads"],
        "layer_norm_first": config["do_stable_layer_norm"],
        "conv_pos": config["num_conv_pos_embeddings"],
        "conv_pos_groups": config["num_conv_pos_embedding_groups"],
        "dropout": config["hidden_dropout"],
        "attention_dropout": config["attention_dropout"],
        "activation_dropout": config["activation_dropout"],
        "encoder_layerdrop": config["layerdrop"],
        "dropout_input": config["feat_proj_dropout"],
        "dropout_features": config.get("feat_quantizer_dropout", 0.0),
        **layout.pop("extra", {}),
    }
    names = ("fairseq", "fairseq.data", "fairseq.data.dictionary")  # pickled by name; the reader never imports it
    sys.modules.update({name: types.ModuleType(name) for name in names})
    fake = sys.modules[names[-1]]
    fake.Dictionary = type("Dictionary", (), {"__module__": names[-1]})
    try:
        checkpoint = {"model": renamed, "task_state": {"dictionaries": [fake.Dictionary()]}}
        if layout.get("argparse"):
            checkpoint["args"] = argparse.Namespace(**settings)
        else:
            checkpoint["cfg"] = {"model": settings, "task": {"normalize": layer_mode}}
        torch.save(checkpoint, path)
    finally:
        for name in names:
            del sys.modules[name]


@pytest.mark.parametrize("case", ["hubert_base_layout", "wav2vec2_large_layout"])
def test_fairseq_checkpoints_load_as_transformers_ones(reference, tmp_path, case):
    pytest.importorskip("torch")
    config = json.loads(str(reference[f"{case}/config"]))
    state_dict = {k.split("/sd/")[1]: v for k, v in reference.items() if k.startswith(f"{case}/sd/")}
    rng = np.random.default_rng(0)
    head = {}
    if case.startswith("hubert"):  # HuBERT's pretraining head: final_proj, 4 special symbols + 7 classes
        head = {"final_proj.weight": rng.standard_normal((8, 32)), "final_proj.bias": rng.standard_normal(8)}
        head["label_embs_concat"] = rng.standard_normal((11, 8))
    head = {k: v.astype(np.float32) for k, v in head.items()}
    fairseq_checkpoint(tmp_path / "model.pt", {**state_dict, **head}, config, extra={"_name": case.split("_")[0]})
    model, variables = ssl.load_fairseq(str(tmp_path / "model.pt"))
    encoder, expected = ssl.from_transformers(state_dict, config)
    if head:
        assert isinstance(model, ssl.HubertPretraining) and model.num_classes == 11 and model.final_dim == 8
        expected = {"encoder": expected["params"], "final_proj": {"kernel": head["final_proj.weight"].T}}
        expected["final_proj"]["bias"] = head["final_proj.bias"]
        expected = {"params": {**expected, "label_embs_concat": head["label_embs_concat"]}}
        assert ssl.load_fairseq(str(tmp_path / "model.pt"), pretraining=False)[0] == encoder
    else:
        assert model == encoder
    jax.tree.map(np.testing.assert_array_equal, variables, expected)


def test_fairseq_wav2vec2_pretraining_checkpoint(reference, tmp_path):
    """wav2vec_small.pt's layout (argparse settings, quantizer.vars, final_proj) -> the
    Wav2Vec2Pretraining transformers' Wav2Vec2ForPreTraining gives."""
    pytest.importorskip("torch")
    config = json.loads(str(reference["pretraining/config"]))
    state_dict = {k[len("pretraining/sd/") :]: v for k, v in reference.items() if k.startswith("pretraining/sd/")}
    extra = {"latent_vars": 7, "latent_groups": 2, "latent_dim": 12, "final_dim": 10}
    fairseq_checkpoint(tmp_path / "wav2vec_small.pt", state_dict, config, argparse=True, extra=extra)
    model, variables = ssl.load_fairseq(str(tmp_path / "wav2vec_small.pt"))
    expected_model, expected = ssl.from_transformers(state_dict, config)
    assert model == expected_model
    jax.tree.map(np.testing.assert_array_equal, variables, expected)
    with pytest.raises(ValueError, match="layer_type='conformer': only 'transformer' is supported"):
        fairseq_checkpoint(tmp_path / "c.pt", state_dict, config, extra={**extra, "layer_type": "conformer"})
        ssl.load_fairseq(str(tmp_path / "c.pt"))


def test_dropout_and_layer_drop_act_in_training_only(reference):
    """transformers' dropouts and layer drop, taken from the config: given a "dropout" rng the
    hidden states are perturbed (differently for each key); without one they are the reference's.
    With layerdrop 1 every layer is skipped: each hidden state is the first."""
    config = json.loads(str(reference["hubert_base_layout/config"]))
    state_dict = {k.split("/sd/")[1]: v for k, v in reference.items() if k.startswith("hubert_base_layout/sd/")}
    model, variables = ssl.from_transformers(state_dict, config)
    assert (model.hidden_dropout, model.attention_dropout, model.layerdrop) == (
        config["hidden_dropout"],
        config["attention_dropout"],
        config["layerdrop"],
    )
    audio = reference["audio"][:1]
    states = jax.jit(
        lambda key: model.apply(variables, audio, method="hidden_states", rngs={} if key is None else {"dropout": key})
    )
    plain = model.clone(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0)
    without = plain.apply(variables, audio, method="hidden_states", rngs={"dropout": jax.random.key(0)})
    np.testing.assert_allclose(states(None)[-1], without[-1], rtol=1e-5, atol=1e-5)  # jitted and not
    a, b = states(jax.random.key(1))[-1], states(jax.random.key(2))[-1]
    assert not np.allclose(a, states(None)[-1], atol=1e-3) and not np.allclose(a, b, atol=1e-3)
    skipping = model.clone(layerdrop=1.0, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    hidden = skipping.apply(variables, audio, method="hidden_states", rngs={"dropout": jax.random.key(3)})
    for h in hidden[1:]:
        np.testing.assert_array_equal(h, hidden[0])
