"""CTC loss, alignment and decoding against ../shared/fixtures/ctc (torch's ctc_loss in
float64; exact decoding by enumerating every alignment) and against brute force."""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FIXTURES

from jaxmodels.ctc import ctc_loss, forced_align, greedy_decode, prefix_beam_search
from jaxmodels.ctc.lm import BOS, EOS, UNK, NGramLM, WordNGramLM, read_arpa, train_ngram, write_arpa

CASES = ["small", "medium", "blank_last", "peaked", "infeasible"]


def load(name):
    """The arrays of ../shared/fixtures/ctc/<name>.npz; the test skips without them."""
    path = FIXTURES / "ctc" / f"{name}.npz"
    if not path.is_file():
        pytest.skip(f"CTC fixture not found at {path}")
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def loss_fn(d, dtype, **kw):
    args = [jnp.asarray(d[k]) for k in ("logit_paddings", "labels", "label_paddings")]
    return lambda x: ctc_loss(x.astype(dtype), *args, blank_id=int(d["blank_id"]), **kw)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("implementation", ["scan", "pallas"])  # pallas: its kernel interpreted off GPUs
def test_loss_and_gradient_match_torch(name, precision, implementation):
    d = load(f"loss_{name}")
    rtol = 1e-6 if precision == "float64" else 1e-4
    feasible = np.isfinite(d["loss_plain"])
    with jax.enable_x64(precision == "float64"):
        dtype = jnp.float64 if precision == "float64" else jnp.float32
        make = functools.partial(loss_fn, implementation=implementation)
        plain, zero_inf = make(d, dtype), make(d, dtype, zero_infinity=True)

        @jax.jit
        def everything(x):
            loss, grad = jax.value_and_grad(lambda x: jnp.sum(jnp.where(feasible, plain(x), 0.0)))(x)
            zloss, zgrad = jax.value_and_grad(lambda x: jnp.sum(zero_inf(x)))(x)
            mean = make(d, dtype, zero_infinity=True, reduction="mean")(x)
            total = make(d, dtype, zero_infinity=True, reduction="sum")(x)
            return plain(x), grad, zero_inf(x), zgrad, mean, total

        loss, grad, zloss, zgrad, mean, total = jax.device_get(everything(jnp.asarray(d["logits"], dtype)))
    np.testing.assert_allclose(loss[feasible], d["loss_plain"][feasible], rtol=rtol)
    assert np.all(np.isposinf(loss[~feasible]))
    scale = np.abs(d["grad_plain"][feasible]).max()
    np.testing.assert_allclose(grad[feasible], d["grad_plain"][feasible], rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(zloss, d["loss_zero_inf"], rtol=rtol)
    np.testing.assert_allclose(zgrad, d["grad_zero_inf"], rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(mean, d["loss_mean_zero_inf"], rtol=rtol)
    np.testing.assert_allclose(total, d["loss_zero_inf"].sum(), rtol=rtol)


def test_bfloat16_logits_accumulate_in_float32():
    d = load("loss_medium")
    logits = jnp.asarray(d["logits"], jnp.bfloat16)
    loss = loss_fn(d, jnp.bfloat16)(logits)
    assert loss.dtype == jnp.float32
    reference = loss_fn(d, jnp.float32)(logits.astype(jnp.float32))
    np.testing.assert_allclose(loss, reference, rtol=1e-6)
    grad = jax.grad(lambda x: jnp.sum(loss_fn(d, jnp.bfloat16)(x)))(logits)
    assert grad.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(grad)))


def test_unrolled_recursions_equal_the_plain_ones(monkeypatch):
    """GPUs run 16 frames per loop iteration (loss.SCAN_UNROLL); the result must not change.
    An odd length leaves a partial last iteration."""
    from jaxmodels.ctc import loss as loss_module

    d = load("loss_medium")
    logits = jnp.asarray(d["logits"], jnp.float32)[:, :-1]
    d = {**d, "logit_paddings": d["logit_paddings"][:, :-1]}

    def value_and_grad():
        return jax.jit(jax.value_and_grad(lambda x: jnp.sum(loss_fn(d, jnp.float32)(x))))(logits)

    plain = value_and_grad()
    monkeypatch.setattr(loss_module, "SCAN_UNROLL", {jax.default_backend(): 16})
    unrolled = value_and_grad()
    np.testing.assert_allclose(unrolled[0], plain[0], rtol=1e-6)
    np.testing.assert_allclose(unrolled[1], plain[1], rtol=1e-5, atol=1e-7)


def test_loss_rejects_bad_arguments():
    d = load("loss_small")
    with pytest.raises(ValueError, match="reduction"):
        loss_fn(d, jnp.float32, reduction="average")(jnp.asarray(d["logits"], jnp.float32))
    with pytest.raises(ValueError, match="implementation must be 'scan' or 'pallas', got 'cuda'"):
        loss_fn(d, jnp.float32, implementation="cuda")(jnp.asarray(d["logits"], jnp.float32))
    with pytest.raises(ValueError, match=r"logits \(B, T, V\) and labels \(B, U\)"):
        ctc_loss(jnp.zeros((2, 5, 3)), jnp.zeros((2, 5)), jnp.zeros((3, 2), jnp.int32), jnp.zeros((3, 2)))


def _collapse(path, blank):
    out, previous = [], None
    for symbol in path:
        if symbol != blank and symbol != previous:
            out.append(symbol)
        previous = symbol
    return out


def test_forced_align_is_the_best_path_with_its_spans(x64):
    rng = np.random.default_rng(0)
    batch, frames, vocab = 3, 7, 3
    logits = rng.normal(size=(batch, frames, vocab)) * 2
    lengths, labels, num_labels = [7, 6, 4], np.array([[1, 2, 1], [1, 1, 0], [2, 0, 0]]), [3, 2, 1]
    logit_paddings = (np.arange(frames)[None] >= np.array(lengths)[:, None]).astype(np.float32)
    label_paddings = (np.arange(3)[None] >= np.array(num_labels)[:, None]).astype(np.float32)
    out = jax.device_get(forced_align(jnp.asarray(logits, jnp.float32), logit_paddings, labels, label_paddings))
    log_probs = np.asarray(jax.nn.log_softmax(logits))
    for b in range(batch):
        target = list(labels[b, : num_labels[b]])
        best, best_path = -np.inf, None
        for path in itertools.product(range(vocab), repeat=lengths[b]):
            if _collapse(path, 0) == target:
                score = sum(log_probs[b, t, s] for t, s in enumerate(path))
                if score > best:
                    best, best_path = score, path
        np.testing.assert_allclose(out.score[b], best, rtol=1e-5)
        assert tuple(out.frame_labels[b, : lengths[b]]) == best_path
        np.testing.assert_allclose(out.frame_scores[b].sum(), best, rtol=1e-5)
        for u, token in enumerate(target):  # each span covers exactly that token's frames
            span = out.frame_labels[b, out.token_starts[b, u] : out.token_ends[b, u]]
            assert len(span) > 0 and np.all(span == token)
    infeasible = forced_align(jnp.zeros((1, 2, 3)), jnp.zeros((1, 2)), np.array([[1, 1]]), jnp.zeros((1, 2)))
    assert infeasible.score[0] == -np.inf


def test_greedy_decode_merges_repeats_and_drops_blanks(x64):
    best = np.array([[2, 2, 0, 2, 1, 1, 0, 0], [0, 0, 3, 3, 3, 1, 2, 2]])
    logits = jax.nn.one_hot(best, 4) * 5.0
    paddings = np.zeros((2, 8), np.float32)
    paddings[1, 6:] = 1.0  # the trailing 2 2 are padding
    labels, label_paddings = greedy_decode(logits, paddings)
    assert labels[0, :3].tolist() == [2, 2, 1] and label_paddings[0].tolist() == [0] * 3 + [1] * 5
    assert labels[1, :2].tolist() == [3, 1] and label_paddings[1].sum() == 6


def bruteforce_cases():
    f = load("decode_bruteforce")
    names = sorted({k.split("/")[0] for k in f})
    return [{k: f[f"{n}/{k}"] for k in ("logits", "blank_id", "top5_labels", "top5_logprob", "greedy")} for n in names]


def test_prefix_beam_search_finds_the_exact_n_best(x64):
    """All twelve problems, batched by vocabulary and blank, padded to the longest."""
    groups = {}
    for case in bruteforce_cases():
        groups.setdefault((case["logits"].shape[1], int(case["blank_id"])), []).append(case)
    for (vocab, blank), cases in groups.items():
        frames = max(len(c["logits"]) for c in cases)
        logits = np.zeros((len(cases), frames, vocab), np.float32)
        paddings = np.ones((len(cases), frames), np.float32)
        for i, case in enumerate(cases):
            logits[i, : len(case["logits"])] = case["logits"]
            paddings[i, : len(case["logits"])] = 0.0
        found = prefix_beam_search(jnp.asarray(logits), paddings, beam_size=64, blank_id=blank, num_results=5)
        greedy, greedy_paddings = greedy_decode(logits, paddings, blank_id=blank)
        for i, case in enumerate(cases):
            want = [tuple(int(x) for x in row if x >= 0) for row in case["top5_labels"]]
            assert [labels for labels, _ in found[i]] == want
            np.testing.assert_allclose([score for _, score in found[i]], case["top5_logprob"], rtol=1e-5)
            length = int((greedy_paddings[i] < 0.5).sum())
            assert greedy[i, :length].tolist() == [x for x in case["greedy"] if x >= 0]


def arpa_probability(model, history, symbol):
    """P(symbol | history) by the ARPA backoff rule, in plain Python."""
    history = tuple(history)[len(history) - len(model) + 1 :] if len(model) > 1 else ()
    gram = history + (symbol,)
    if gram in model[len(gram)]:
        return 10 ** model[len(gram)][gram][0]
    if not history:
        return 10 ** model[1][(UNK,)][0]
    return 10 ** model[len(history)].get(history, (0.0, 0.0))[1] * arpa_probability(model, history[1:], symbol)


SENTENCES = ["one two three", "two three four", "three one two", "four four one", "one one two"]


def test_ngram_is_normalised_and_survives_arpa(tmp_path):
    model = train_ngram([s.replace(" ", "|") for s in SENTENCES], order=3)
    write_arpa(model, tmp_path / "lm.arpa")
    loaded = read_arpa(tmp_path / "lm.arpa")
    assert loaded.keys() == model.keys() and all(loaded[n].keys() == model[n].keys() for n in model)
    vocab = sorted({c for s in SENTENCES for c in s.replace(" ", "|")} | {EOS, UNK})
    for history in [(BOS,), (BOS, "o"), ("o", "n"), ("x", "y"), ("e", "|"), ("|", "t")]:
        assert math.isclose(sum(arpa_probability(loaded, history, w) for w in vocab), 1.0, rel_tol=1e-4)
    with pytest.raises(ValueError, match="whitespace"):
        write_arpa(train_ngram(["a b"], order=2), tmp_path / "bad.arpa")
    (tmp_path / "broken.arpa").write_text("\\data\\\nngram 1=1\n\n\\1-grams:\n-1.0 a b c\n")
    with pytest.raises(ValueError, match="broken.arpa:5: expected 1 symbols"):
        read_arpa(tmp_path / "broken.arpa")


def test_device_lm_scores_as_the_arpa_rule(x64):
    model = train_ngram([s.replace(" ", "|") for s in SENTENCES], order=3)
    tokens = ["<blank>"] + sorted({c for s in SENTENCES for c in s.replace(" ", "|")}) + ["x"]  # x: unknown
    lm = NGramLM.create(model, tokens)
    state, history, on_device, in_python = jnp.array([lm.initial_state()]), [BOS], 0.0, 0.0
    for symbol in "two|onex|four":
        logp, state = lm.score(state, jnp.array([tokens.index(symbol)]))
        on_device += float(logp[0])
        in_python += math.log(arpa_probability(model, history, symbol if symbol in tokens[1:-1] else UNK))
        history.append(symbol if symbol != "x" else UNK)
    on_device += float(lm.final_score(state)[0])
    in_python += math.log(arpa_probability(model, history, EOS))
    assert math.isclose(on_device, in_python, rel_tol=1e-5)


def test_shallow_fusion_prefers_what_the_lm_knows(x64):
    """The acoustics slightly prefer "aa", the LM (which has only seen "ab") prefers "ab"."""
    tokens = ["<blank>", "a", "b", "|"]
    model = train_ngram(["ab|ab", "ab", "ab|ab|ab"], order=3)
    lm = NGramLM.create(model, tokens)
    probs = np.array([[0.01, 0.97, 0.01, 0.01], [0.98, 0.0, 0.01, 0.01], [0.02, 0.50, 0.48, 0.0]])
    logits = jnp.asarray(np.log(probs + 1e-9)[None], jnp.float32)
    paddings = jnp.zeros((1, 3))
    plain = prefix_beam_search(logits, paddings, beam_size=8)[0]
    fused = prefix_beam_search(logits, paddings, beam_size=8, lm=lm, lm_weight=1.0)[0]
    assert plain[0][0] == (1, 1) and plain[1][0] == (1, 2)
    assert fused[0][0] == (1, 2)


def test_word_lm_over_characters_scores_completed_words():
    sentences = [s.split() for s in SENTENCES]
    model = train_ngram(sentences, order=2)
    tokens = ["<blank>", "|"] + sorted({c for s in SENTENCES for c in s.replace(" ", "")}) + ["v", "x"]
    lm = WordNGramLM.create(model, tokens)
    state = jax.tree.map(lambda leaf: jnp.asarray(leaf)[None], lm.initial_state())
    on_device = 0.0
    for symbol in "two|onex|four":  # "onex" is no word: <unk>
        logp, state = lm.score(state, jnp.array([tokens.index(symbol)]))
        on_device += float(logp[0])
    on_device += float(lm.final_score(state)[0])
    history, in_python = [BOS], 0.0
    for word in ["two", UNK, "four", EOS]:
        in_python += math.log(arpa_probability(model, history, word))
        history.append(word)
    assert math.isclose(on_device, in_python, rel_tol=1e-5)

    # Acoustics slightly prefer "tvo"; the word LM knows only "two".
    frames = [{"t": 0.97}, {"<blank>": 0.98}, {"v": 0.50, "w": 0.48}, {"<blank>": 0.98}, {"o": 0.97}]
    probs = np.full((len(frames), len(tokens)), 1e-4)
    for t, frame in enumerate(frames):
        for symbol, p in frame.items():
            probs[t, tokens.index(symbol)] = p
    logits = jnp.asarray(np.log(probs)[None], jnp.float32)
    plain = prefix_beam_search(logits, jnp.zeros((1, len(frames))), beam_size=8)[0][0][0]
    fused = prefix_beam_search(logits, jnp.zeros((1, len(frames))), beam_size=8, lm=lm, lm_weight=1.0)[0][0][0]
    spell = lambda ids: "".join(tokens[i] for i in ids)  # noqa: E731
    assert spell(plain) == "tvo" and spell(fused) == "two"
