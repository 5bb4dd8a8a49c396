"""CosyVoice's text-to-speech-token LM against the official TransformerLM
(tests/data/make_llm_reference.py: narrowed, random weights): the training logits, loss and
accuracy of a padded batch, and inference's tokens with a prompt, with a speaker only and
with neither; the cached decoding equals the full forward pass, guided decoding the guided
logits of two full passes; the released parameter count."""

import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.cosyvoice import llm

REFERENCE = pathlib.Path(__file__).parent / "data" / "llm_reference.npz"


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE) as f:
        data = dict(f)
    cfg = llm.LMConfig(**json.loads(str(data["config"])))
    state_dict = {k.removeprefix("sd/"): v for k, v in data.items() if k.startswith("sd/")}
    return cfg, llm.from_torch(state_dict, cfg), data


def _close(actual, expected):
    expected = np.asarray(expected)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_training_logits_loss_and_accuracy_equal_upstream(reference):
    cfg, variables, r = reference
    model = llm.TransformerLM(cfg)
    args = [r[f"train/{k}"] for k in ("text", "text_len", "speech", "speech_len", "embedding")]
    target = llm.targets(*args[:4], eos=cfg.speech_token_size)

    def forward(params):
        logits = model.apply({"params": params}, *args)
        loss, accuracy = llm.loss(logits, target)
        return loss, (accuracy, logits)

    (loss, (accuracy, logits)), grads = jax.jit(jax.value_and_grad(forward, has_aux=True))(variables["params"])
    # logits T + S + 3 wide, upstream's rows max(T_i + S_i) + 3
    _close(logits[:, : r["train/logits"].shape[1]], r["train/logits"])
    _close(loss, r["train/loss"])
    np.testing.assert_allclose(accuracy, r["train/acc"], atol=1e-6)
    assert all(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads["llm"]))


def _case(r, name):
    """generate's inputs for one reference case (a batch of one)."""
    text, prompt_text, prompt_speech, embedding = (
        r[f"{name}/{k}"] for k in ("text", "prompt_text", "prompt_speech", "embedding")
    )
    return (
        text,
        np.array([text.shape[1]]),
        prompt_text,
        np.array([prompt_text.shape[1]]),
        prompt_speech,
        np.array([prompt_speech.shape[1]]),
        embedding if embedding.shape[0] else None,
    )


def _batch(*cases):
    """Cases with speakers as one batch: prompts right-padded, ragged."""
    columns = list(zip(*cases))
    batch = []
    for i, column in enumerate(columns):
        if i % 2 or i == 6:  # lengths and embeddings
            batch.append(np.concatenate(column))
        else:
            width = max(x.shape[1] for x in column)
            batch.append(np.concatenate([np.pad(x, ((0, 0), (0, width - x.shape[1]))) for x in column]))
    return batch


@functools.partial(jax.jit, static_argnums=0)
def _log_probs(model, variables, text, text_len, prompt_text, prompt_len, speech, speech_len, embedding):
    """Log-probabilities (B, L, V + 1) of the full forward pass over [prompt text + text, prompt
    speech + tokens] (rows packed as `generate` packs them)."""
    both, both_len = llm.ragged_concat([(prompt_text, prompt_len), (text, text_len)], 0)
    x, length = model.apply(variables, both, both_len, speech, speech_len, embedding, method="sequence")
    return jax.nn.log_softmax(model.apply(variables, x, length, method="logits"), axis=-1), length


def test_inference_equals_upstream(reference):
    """Deterministic sampling (the reference's top_k 1, no repetition fallback): a prompted row
    and an unprompted one decoded together (ragged prefixes), and one without a speaker, draw
    upstream's tokens; the full forward pass over prompt and tokens gives the
    log-probabilities each was drawn from, eos held back where upstream holds it."""
    cfg, variables, r = reference
    model = llm.TransformerLM(cfg)
    for names in (["zero_shot", "sft"], ["instruct"]):
        cases = [_case(r, name) for name in names]
        batch = _batch(*cases) if len(cases) > 1 else list(cases[0])
        tokens, count = llm.generate(model, variables["params"], jax.random.key(0), *batch, max_new_tokens=64)
        for i, name in enumerate(names):
            expected = r[f"{name}/tokens"]
            assert int(count[i]) == len(expected), name
            np.testing.assert_array_equal(tokens[i, : len(expected)], expected)

        speech = [np.concatenate([case[4], r[f"{name}/tokens"][None]], axis=1) for case, name in zip(cases, names)]
        with_tokens = [(*case[:4], s, np.array([s.shape[1]]), case[6]) for case, s in zip(cases, speech)]
        inputs = _batch(*with_tokens) if len(cases) > 1 else list(with_tokens[0])
        logp, length = _log_probs(model, variables, *inputs)
        for i, name in enumerate(names):
            steps = r[f"{name}/logp"]  # one per draw: the tokens', then eos's if it came
            first = int(length[i]) - len(r[f"{name}/tokens"]) - 1  # the slot predicting the first token
            row = np.array(logp[i, first : first + len(steps)])
            row[: 2 * cases[i][0].shape[1], cfg.speech_token_size] = -np.inf
            finite = np.isfinite(steps)
            np.testing.assert_array_equal(np.isfinite(row), finite)
            _close(row[finite], steps[finite])


@pytest.mark.parametrize("lm", ["transformer_lm", "qwen2_lm"])
def test_guided_inference_draws_from_the_guided_logits(lm, request):
    """guidance_scale 2: each token of a prompted row and an unprompted one (decoded together) is
    the argmax of u + 2 (c - u), c the full pass's log-probabilities with the text and the prompt
    text, u without them (both over the prompt speech and the tokens drawn); a stop token where it
    ended. CosyVoice-300M's LM and CosyVoice 2's."""
    if lm == "transformer_lm":
        cfg, variables, r = request.getfixturevalue("reference")
        model_type, names = llm.TransformerLM, ("zero_shot", "sft")
    else:
        cfg, variables, _, r = request.getfixturevalue("qwen2_reference")
        model_type, names = llm.Qwen2LM, ("zero_shot", "cross_lingual")
    cfg = dataclasses.replace(cfg, guidance_scale=2.0)
    model = model_type(cfg)
    cases = [_case(r, name) for name in names]
    tokens, count = llm.generate(model, variables["params"], jax.random.key(0), *_batch(*cases), max_new_tokens=64)
    for i, case in enumerate(cases):
        drawn = np.asarray(tokens[i, : int(count[i])])
        speech = np.concatenate([case[4], drawn[None]], axis=1)
        rows = {}
        for key, n in (("c", 1), ("u", 0)):
            inputs = (case[0], case[1] * n, case[2], case[3] * n, speech, np.array([speech.shape[1]]), case[6])
            logp, length = _log_probs(model, variables, *inputs)
            first = int(length[0]) - len(drawn) - 1
            rows[key] = np.array(logp[0, first : first + len(drawn) + 1])
        guided = rows["u"] + 2.0 * (rows["c"] - rows["u"])
        held_back = int(case[0].shape[1] * cfg.min_token_text_ratio)
        guided[:held_back, cfg.speech_token_size] = -np.inf  # eos before the minimum
        assert len(drawn) > 0 and not np.array_equal(guided.argmax(-1), rows["c"].argmax(-1))
        np.testing.assert_array_equal(guided[:-1].argmax(-1), drawn)
        assert guided[-1].argmax() >= cfg.speech_token_size


def test_ras_sampling_redraws_a_repeated_token():
    cfg = llm.LMConfig(top_k=3, top_p=0.8)
    logp = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 2))
    recent = jnp.array([[-1] * cfg.win_size, [0, 1] + [-1] * (cfg.win_size - 2)])
    draws = jax.vmap(lambda k: llm.ras_sample(k, logp, recent, cfg))(jax.random.split(jax.random.key(0), 400))
    # the nucleus {0, 1} (0.5 + 0.3 reaches 0.8); a repeat of it is redrawn without it
    assert set(np.unique(draws[:, 0])) == {0, 1}
    assert set(np.unique(draws[:, 1])) <= {0, 1, 2, 3} and np.mean(np.isin(draws[:, 1], [2, 3])) > 0.3


def test_released_parameter_count_and_converter_errors(reference):
    assert llm.param_count(llm.config("llm_cosyvoice_300m")) == 310_718_465
    cfg, _, r = reference
    state_dict = {k.removeprefix("sd/"): v for k, v in r.items() if k.startswith("sd/")}
    del state_dict["llm.encoders.1.norm1.weight"]
    with pytest.raises(ValueError, match=r"llm\.encoders\.\*\.norm1\.weight: layers \[0, 2\], the model has 3"):
        llm.from_torch(state_dict, cfg)


@pytest.fixture(scope="module")
def qwen2_reference():
    with np.load(pathlib.Path(__file__).parent / "data" / "qwen2lm_reference.npz") as f:
        data = dict(f)
    fields = json.loads(str(data["config"]))
    cfg = llm.Qwen2LMConfig(**{**fields, "llm": llm.qwen2.Qwen2Config(**fields["llm"])})
    state_dict = {k.removeprefix("sd/"): v for k, v in data.items() if k.startswith("sd/")}
    return cfg, llm.qwen2_from_torch(state_dict, cfg), state_dict, data


def test_cosyvoice2_lm_equals_upstream(qwen2_reference):
    """CosyVoice 2's Qwen2LM (tests/data/make_qwen2lm_reference.py): the training rows' logits and
    targets of a padded batch; inference with a prompt and without (cross-lingual), both in one
    ragged batch, draws upstream's tokens (deterministic sampling) from its log-probabilities."""
    cfg, variables, _, r = qwen2_reference
    model = llm.Qwen2LM(cfg)
    args = [r[f"train/{k}"] for k in ("text", "text_len", "speech", "speech_len")]
    logits = jax.jit(model.apply)(variables, *args)
    width = r["train/logits"].shape[1]
    for row, n in enumerate(r["train/length"]):
        _close(logits[row, :n], r["train/logits"][row, :n])
    target = llm.targets(*args, eos=cfg.speech_token_size, speaker=False)
    np.testing.assert_array_equal(target[:, :width], r["train/target"])

    cases = [_case(r, name) for name in ("zero_shot", "cross_lingual")]  # their x-vectors: empty, ignored
    batch = _batch(*cases)
    tokens, count = llm.generate(model, variables["params"], jax.random.key(0), *batch, max_new_tokens=64)
    for i, name in enumerate(("zero_shot", "cross_lingual")):
        expected = r[f"{name}/tokens"]
        assert int(count[i]) == len(expected), name
        np.testing.assert_array_equal(tokens[i, : len(expected)], expected)
        speech = np.concatenate([cases[i][4], expected[None]], axis=1)
        logp, length = _log_probs(model, variables, *cases[i][:4], speech, np.array([speech.shape[1]]), None)
        steps = r[f"{name}/logp"]
        first = int(length[0]) - len(expected) - 1
        row = np.array(logp[0, first : first + len(steps)])
        row[: 2 * cases[i][0].shape[1], cfg.speech_token_size] = -np.inf  # eos held back
        finite = np.isfinite(steps)
        np.testing.assert_array_equal(np.isfinite(row), finite)
        _close(row[finite], steps[finite])


def test_cosyvoice2_lm_size_and_errors(qwen2_reference):
    cfg, _, state_dict, _ = qwen2_reference
    shapes = llm.qwen2_init_shapes(llm.config("llm_cosyvoice2"))
    assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes)) == 505_803_812  # CosyVoice2-0.5B's llm.pt
    with pytest.raises(ValueError, match="unexpected keys: .*llm.extra.weight"):
        llm.qwen2_from_torch({**state_dict, "llm.extra.weight": np.zeros(1)}, cfg)
    wrong = dict(state_dict, **{"speech_embedding.weight": np.zeros((44, 32), np.float32)})
    with pytest.raises(ValueError, match=r"speech_embedding.weight: checkpoint \(44, 32\) vs model \(43, 32\)"):
        llm.qwen2_from_torch(wrong, cfg)


def test_cosyvoice2_training_rows_equal_upstreams_packing(qwen2_reference):
    """Qwen2LM.training_rows against upstream's prepare_lm_input_target: unistream rows (the
    training batch above) and a bistream one beside a row too short to interleave."""
    cfg, variables, _, r = qwen2_reference
    model = llm.Qwen2LM(cfg)

    def rows(x, length, target):
        return model.apply(variables, x, length, method="logits"), target

    for case, flags in (("train", [False, False]), ("bistream", [True, True])):
        args = [r[f"{case}/{k}"] for k in ("text", "text_len", "speech", "speech_len")]
        logits, target = jax.jit(
            lambda *a: rows(*model.apply(variables, *a, jnp.array(flags), method="training_rows"))
        )(*args)
        expected = r[f"{case}/target"]
        np.testing.assert_array_equal(target[:, : expected.shape[1]], expected)
        assert np.all(np.asarray(target[:, expected.shape[1] :]) == llm.IGNORE)
        for row, n in enumerate(r[f"{case}/length"]):
            _close(logits[row, :n], r[f"{case}/logits"][row, :n])


ALIGNED = llm.LMConfig(
    text_token_size=50,
    speech_token_size=40,
    text_encoder_input_size=32,
    text_encoder_output_size=32,
    llm_input_size=32,
    llm_output_size=32,
    spk_embed_dim=8,
    text_encoder_heads=2,
    text_encoder_linear_units=64,
    text_encoder_blocks=1,
    llm_heads=2,
    llm_linear_units=64,
    llm_blocks=2,
    word_alignment=True,
    top_k=1,
    tau_r=2.0,  # never redrawn: deterministic sampling
    min_token_text_ratio=0.0,
)


@pytest.mark.parametrize("moves", [True, False])
def test_cosyvoice_word_aligned_decoding_follows_the_full_pass(moves):
    """word_alignment: with `advance` certain (its bias +-30) the pointer moves every token, and
    a row ends after its text's last word, one token a word, or never, and a row runs to its
    limit on the first word; each token is the argmax of the full pass told the same words and
    progress (the prompt's tokens told none). Guided decoding ends the rows alike."""
    model = llm.TransformerLM(ALIGNED)
    rng = np.random.default_rng(0)
    text = rng.integers(1, 50, (2, 7)).astype(np.int32)
    text_words = np.array([[0, 0, -1, 1, 1, -1, 2], [0, -1, 1, -1, -1, -1, -1]], np.int32)
    text_len = np.array([7, 3], np.int32)
    prompt_text = rng.integers(1, 50, (2, 3)).astype(np.int32)
    prompt_words = np.array([[0, -1, 1], [0, 0, 0]], np.int32)
    prompt_len = np.array([3, 0], np.int32)
    prompt_speech = rng.integers(0, 40, (2, 5)).astype(np.int32)
    prompt_speech_len = np.array([5, 0], np.int32)
    xvector = rng.normal(size=(2, 8)).astype(np.float32)
    params = model.init(
        jax.random.key(0),
        text,
        text_len,
        prompt_speech,
        prompt_speech_len,
        xvector,
        text_words,
        np.zeros((2, 6), np.int32),
    )["params"]
    params = {**params, "advance": {**params["advance"], "bias": jnp.full((1,), 30.0 if moves else -30.0)}}
    args = (text, text_len, prompt_text, prompt_len, prompt_speech, prompt_speech_len, xvector)
    words = dict(text_words=text_words, prompt_text_words=prompt_words)
    tokens, count = llm.generate(model, params, jax.random.key(1), *args, max_new_tokens=12, **words)
    n_words = [3, 2]
    expected_count = n_words if moves else [min(12, 20 * 7), min(12, 20 * 3)]
    np.testing.assert_array_equal(count, expected_count)
    guided = llm.TransformerLM(dataclasses.replace(ALIGNED, guidance_scale=2.0))
    _, guided_count = llm.generate(guided, params, jax.random.key(1), *args, max_new_tokens=12, **words)
    np.testing.assert_array_equal(guided_count, expected_count)

    first = [2, 0]  # the prompt texts' words
    for i in range(2):
        drawn = np.asarray(tokens[i, : int(count[i])])
        p, d = int(prompt_speech_len[i]), len(drawn)
        speech = np.concatenate([prompt_speech[i, :p], drawn])[None]
        told = np.full((1, p + d + 1), -1, np.int32)
        told[0, p:] = first[i] + (np.arange(d + 1) if moves else 0)
        both, both_len = llm.ragged_concat(
            [(prompt_text[i : i + 1], prompt_len[i : i + 1]), (text[i : i + 1], text_len[i : i + 1])], 0
        )
        later = np.where(text_words[i] >= 0, text_words[i] + first[i], -1)[None]
        both_words, _ = llm.ragged_concat(
            [(prompt_words[i : i + 1], prompt_len[i : i + 1]), (later, text_len[i : i + 1])], -1
        )
        logits, advance = model.apply(
            {"params": params}, both, both_len, speech, np.array([p + d]), xvector[i : i + 1], both_words, told
        )
        start = 2 + int(both_len[0]) + p  # the slot after the prompt's tokens predicts the first drawn token
        np.testing.assert_array_equal(np.argmax(logits[0, start : start + d, :40], -1), drawn)
        assert np.all((advance[0, start : start + d] > 0) == moves)
