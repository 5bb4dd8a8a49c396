"""Speech token LMs: cached decoding equals the full forward pass, sampling, delay pattern, k-means."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels import speechlm
from jaxmodels.speechlm import transformer
from jaxmodels.speechlm.valle import VALLEAR, VALLENAR

TINY = dict(d_model=32, nhead=4, num_layers=2, dim_feedforward=64, dropout=0.0)


def ar_model(positions="sin", audio_position_scale=1.0, group_size=1):
    return VALLEAR(
        text_vocab_size=20,
        codebook_size=16,
        positions=positions,
        audio_position_scale=audio_position_scale,
        group_size=group_size,
        **TINY,
    )


def init(model, rng=0):
    args, kwargs = model.example()
    return model.init(jax.random.PRNGKey(rng), *args, **kwargs)["params"]


def ar_full_logits(model, params, text, codes):
    """One row, unpadded, no cache: logits at every audio place of [text; BOS x G, codes]."""
    audio = jnp.asarray([[model.bos] * model.group_size + list(codes)], jnp.int32)
    text = jnp.asarray([text], jnp.int32)
    groups = audio.shape[1] // model.group_size
    return model.apply(
        {"params": params},
        audio,
        jnp.arange(groups)[None],
        jnp.ones((1, groups), bool),
        text=text,
        text_valid=jnp.ones(text.shape, bool),
    )[0]


@pytest.mark.parametrize(
    "positions,scale", [pytest.param("sin", 1.0, marks=pytest.mark.slow), ("rope", 1.0), ("sin", 0.2)]
)
def test_ar_cached_logits_equal_full_forward(positions, scale):
    """A ragged batch: padded text and prompts in one prefill, then one token per cached step."""
    model = ar_model(positions, scale)
    params = init(model)
    texts, prompts = [[3, 4, 5, 6, 7], [8, 9]], [[1, 2, 3], []]
    continuation = [[4, 5, 6, 7], [10, 11, 12, 13]]
    text = jnp.asarray([t + [0] * (5 - len(t)) for t in texts])
    prompt = jnp.asarray([p + [0] * (3 - len(p)) for p in prompts])
    text_len, prompt_len = jnp.asarray([5, 2]), jnp.asarray([3, 0])
    audio = jnp.concatenate([jnp.full((2, 1), model.bos), prompt], axis=1)
    positions_ = jnp.broadcast_to(jnp.arange(4), (2, 4))
    whole = jnp.zeros((2, 4 + 4), jnp.int32)
    text_valid = transformer.lengths_mask(text_len, 5)
    cache = transformer.empty_cache(model, whole, whole, jnp.ones(whole.shape, bool), text=text, text_valid=text_valid)
    logits, v = model.apply(
        {"params": params, "cache": cache},
        audio,
        positions_,
        positions_ <= prompt_len[:, None],
        text=text,
        text_valid=text_valid,
        decode=True,
        mutable=["cache"],
    )
    cache = v["cache"]
    cached = [[logits[b, int(prompt_len[b])]] for b in range(2)]
    for i in range(4):
        token = jnp.asarray([c[i] for c in continuation])[:, None]
        logits, v = model.apply(
            {"params": params, "cache": cache},
            token,
            (prompt_len + 1 + i)[:, None],
            jnp.ones((2, 1), bool),
            decode=True,
            mutable=["cache"],
        )
        cache = v["cache"]
        for b in range(2):
            cached[b].append(logits[b, 0])
    for b in range(2):
        full = ar_full_logits(model, params, texts[b], prompts[b] + continuation[b])[len(prompts[b]) :]
        np.testing.assert_allclose(np.stack(cached[b]), full, atol=2e-5)
    if scale != 1.0:  # audio positions in text units: another function of the same weights
        assert not np.allclose(
            full, ar_full_logits(ar_model(positions), params, texts[1], prompts[1] + continuation[1])
        )


@pytest.mark.parametrize("group_size", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_generate_ar_greedy_equals_full_forward_greedy(group_size):
    """Codes drawn a group at a time (VALL-E 2's grouped codes) from the cache, as from the full pass."""
    model = ar_model(group_size=group_size)
    params = init(model, 1)
    text, text_len = jnp.asarray([[3, 4, 5], [6, 7, 0]]), jnp.asarray([3, 2])
    prompt, prompt_len = jnp.asarray([[1, 2], [5, 0]]), jnp.asarray([2, 2 - group_size])
    codes, lengths = speechlm.generate_ar(
        model, params, text, text_len, prompt, prompt_len, jax.random.PRNGKey(0), max_new_tokens=6, temperature=0.0
    )
    for b in range(2):
        seq = [int(c) for c in prompt[b, : int(prompt_len[b])]]
        expected = []
        while len(expected) < 6 and model.eos not in expected:
            logits = ar_full_logits(model, params, [int(t) for t in text[b, : int(text_len[b])]], seq)
            group = [int(c) for c in jnp.argmax(logits[-group_size:], -1)]
            expected += group
            seq += group
        n = int(lengths[b])
        assert list(np.asarray(codes[b, :n])) == expected[:n]
        assert n == 6 or expected[n] == model.eos
        assert np.all(np.asarray(codes[b, n:]) == model.eos)


@pytest.mark.parametrize(
    "group_size,x64",
    [(1, False), (2, False), pytest.param(2, True, id="2-x64", marks=pytest.mark.slow)],
    indirect=["x64"],
)
def test_generate_ar_holds_eos_back_per_row(group_size, x64):
    """A model that says EOS at once: min_new_tokens, one per row, makes each row go on (and
    a row may end inside a group)."""
    import flax.linen as nn

    model = ar_model(group_size=group_size)
    params = nn.meta.unbox(init(model, 1))
    out_norm = params["decoder"]["out_norm"]["norm"]
    out_norm["scale"] = jnp.zeros_like(out_norm["scale"])  # every position's features: the bias
    out_norm["bias"] = jnp.zeros_like(out_norm["bias"]).at[0].set(1.0)
    eos_columns = model.eos + (model.codebook_size + 1) * np.arange(group_size)  # each place's EOS
    params["predict"]["kernel"] = jnp.zeros_like(params["predict"]["kernel"]).at[0, eos_columns].set(10.0)
    text, text_len = jnp.asarray([[3, 4, 5], [6, 7, 0]]), jnp.asarray([3, 2])
    prompt, prompt_len = jnp.asarray([[1, 2], [5, 0]]), jnp.asarray([2, 0])
    generate = functools.partial(
        speechlm.generate_ar,
        model,
        params,
        text,
        text_len,
        prompt,
        prompt_len,
        jax.random.PRNGKey(0),
        max_new_tokens=6,
        temperature=0.0,
    )
    assert list(np.asarray(generate()[1])) == [0, 0]
    codes, lengths = generate(min_new_tokens=jnp.asarray([3, 0]))
    assert list(np.asarray(lengths)) == [3, 0]
    assert np.all(np.asarray(codes[0, :3]) < model.eos) and np.all(np.asarray(codes[:, 3:]) == model.eos)
    assert list(np.asarray(generate(min_new_tokens=2)[1])) == [2, 2]


def pointer_words(model, params, audio, prompt_groups, first_word, text, text_words):
    """(1, groups) words that VALL-E R's pointer tells each position of one row's full pass:
    none on the prompt, first_word after it, then one word on wherever the full pass's
    `advance` says so (one full pass per position)."""
    groups = audio.shape[1] // model.group_size
    words = np.full(groups, -1)
    words[prompt_groups] = first_word
    for j in range(prompt_groups, groups - 1):
        _, advance = model.apply(
            {"params": params},
            audio,
            jnp.arange(groups)[None],
            jnp.ones((1, groups), bool),
            text,
            jnp.ones(text.shape, bool),
            text_words,
            jnp.asarray(words)[None],
            speechlm.word_progress(jnp.asarray(words)[None]),
        )
        words[j + 1] = words[j] + int(advance[0, j] > 0)
    return jnp.asarray(words)[None]


def test_generate_ar_with_word_alignment_equals_full_forward():
    """VALL-E R's pointer over words: from the cache each group is the full pass's greedy
    group given the words the pointer took, the pointer advances where the full pass says
    so, and a row ends when it moves past its last word (never on EOS)."""
    model = VALLEAR(text_vocab_size=20, codebook_size=16, group_size=2, word_alignment=True, **TINY)
    args, kwargs = model.example(2, 6, 5)
    params = model.init(jax.random.PRNGKey(3), *args, **kwargs)["params"]
    params["advance"]["bias"] = jnp.full((1,), 2.0)  # advancing likely: every row ends within the steps
    text = jnp.asarray([[3, 4, 0, 5, 6, 7], [8, 0, 9, 9, 0, 10]])  # 0 stands for the space here
    text_words = jnp.asarray([[0, 0, -1, 1, 1, 1], [0, -1, 1, 1, -1, 2]])
    prompt, prompt_len = jnp.asarray([[1, 2, 3, 4], [5, 6, 0, 0]]), jnp.asarray([4, 2])
    first_word, num_words = jnp.asarray([1, 1]), jnp.asarray([2, 3])
    codes, lengths = speechlm.generate_ar(
        model,
        params,
        text,
        jnp.asarray([6, 6]),
        prompt,
        prompt_len,
        jax.random.PRNGKey(0),
        max_new_tokens=20,
        temperature=0.0,
        text_words=text_words,
        first_word=first_word,
        num_words=num_words,
    )
    for b in range(2):
        p, n = int(prompt_len[b]) // 2, int(lengths[b])
        assert 0 < n < 20 and n % 2 == 0 and np.all(np.asarray(codes[b, n:]) == model.eos)
        audio = jnp.concatenate([jnp.full((2,), model.bos), prompt[b, : 2 * p], codes[b, :n]])[None]
        groups = audio.shape[1] // 2
        words = pointer_words(model, params, audio, p, int(first_word[b]), text[b : b + 1], text_words[b : b + 1])
        logits, _ = model.apply(
            {"params": params},
            audio,
            jnp.arange(groups)[None],
            jnp.ones((1, groups), bool),
            text[b : b + 1],
            jnp.ones((1, 6), bool),
            text_words[b : b + 1],
            words,
            speechlm.word_progress(words),
        )
        # the position that drew the last group moved the pointer past the last word: the row ended
        assert list(np.asarray(words[0, -2:])) == [int(num_words[b]) - 1, int(num_words[b])]
        greedy = np.argmax(np.asarray(logits[0, 2 * p : 2 * p + n]), -1)
        np.testing.assert_array_equal(greedy, np.asarray(codes[b, :n]))


@pytest.mark.parametrize("word_alignment", [False, True])
def test_generate_ar_with_guidance_equals_full_forward(word_alignment):
    """Classifier-free guidance: each greedy group is the argmax of u + w (c - u), c the full
    pass with the text (and its words), u without any (no text token valid, words -1)."""
    model = VALLEAR(text_vocab_size=20, codebook_size=16, group_size=2, word_alignment=word_alignment, **TINY)
    args, kwargs = model.example(2, 6, 5)
    params = model.init(jax.random.PRNGKey(4), *args, **kwargs)["params"]
    text, text_len = jnp.asarray([[3, 4, 0, 5, 6, 7], [8, 0, 9, 9, 0, 0]]), jnp.asarray([6, 4])
    prompt, prompt_len = jnp.asarray([[1, 2, 3, 4], [5, 6, 0, 0]]), jnp.asarray([4, 2])
    words = {}
    if word_alignment:
        params["advance"]["bias"] = jnp.full((1,), -1.0)  # a few groups per word
        words = dict(
            text_words=jnp.asarray([[0, 0, -1, 1, 1, 1], [0, -1, 1, 1, -1, -1]]),
            first_word=jnp.asarray([1, 1]),
            num_words=jnp.asarray([2, 2]),
        )
    scale = 3.0
    codes, lengths = speechlm.generate_ar(
        model,
        params,
        text,
        text_len,
        prompt,
        prompt_len,
        jax.random.PRNGKey(0),
        max_new_tokens=8,
        temperature=0.0,
        guidance_scale=scale,
        **words,
    )
    unguided = speechlm.generate_ar(
        model,
        params,
        text,
        text_len,
        prompt,
        prompt_len,
        jax.random.PRNGKey(0),
        max_new_tokens=8,
        temperature=0.0,
        **words,
    )[0]
    assert not np.array_equal(np.asarray(codes), np.asarray(unguided))
    for b in range(2):
        p, n, t = int(prompt_len[b]) // 2, int(lengths[b]), int(text_len[b])
        audio = jnp.concatenate([jnp.full((2,), model.bos), prompt[b, : 2 * p], codes[b, :n]])[None]
        groups = audio.shape[1] // 2
        row = dict(text=text[b : b + 1, :t])
        aligned = told = untold = {}
        if word_alignment:
            aligned = dict(text_words=words["text_words"][b : b + 1, :t])
            audio_words = pointer_words(model, params, audio, p, 1, row["text"], aligned["text_words"])
            told = dict(audio_words=audio_words, word_progress=speechlm.word_progress(audio_words))
            untold = dict(audio_words=jnp.full((1, groups), -1), word_progress=told["word_progress"])

        def full(text_valid, words):
            out = model.apply(
                {"params": params},
                audio,
                jnp.arange(groups)[None],
                jnp.ones((1, groups), bool),
                text_valid=jnp.full((1, t), text_valid),
                **row,
                **aligned,
                **words,
            )
            return (out[0] if word_alignment else out)[0, 2 * p : 2 * p + n]

        conditional, unconditional = full(True, told), full(False, untold)
        guided = np.array(unconditional + scale * (conditional - unconditional))
        if word_alignment:  # rows end on the pointer, never on EOS
            guided[:, model.eos] = -np.inf
        np.testing.assert_array_equal(np.argmax(guided, -1), np.asarray(codes[b, :n]))


def test_word_progress_and_advance_targets():
    words = jnp.asarray([[-1, -1, 0, 0, 0, 1, 2, 2, 3, -1]])  # a prompt, words 0-2, EOS due at 8
    np.testing.assert_array_equal(speechlm.word_progress(words), [[0, 1, 0, 1, 2, 0, 0, 1, 0, 0]])
    moves, scored = speechlm.advance_targets(words, jnp.asarray([8]))
    np.testing.assert_array_equal(scored, [[0, 0, 1, 1, 1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(moves[0, 2:8], [0, 0, 1, 1, 0, 1])


def test_ar_training_inputs():
    inputs, targets, valid = speechlm.ar_training_inputs(
        jnp.asarray([[5, 6, 7], [8, 9, 0]]), jnp.asarray([3, 2]), bos=17, eos=16
    )
    np.testing.assert_array_equal(inputs, [[17, 5, 6, 7], [17, 8, 9, 0]])
    np.testing.assert_array_equal(targets[0], [5, 6, 7, 16])
    np.testing.assert_array_equal(targets[1, :3], [8, 9, 16])
    np.testing.assert_array_equal(valid, [[1, 1, 1, 1], [1, 1, 1, 0]])
    # Groups of 2: a group of BOS first, and the group after the codes holds the EOS.
    inputs, targets, valid = speechlm.ar_training_inputs(jnp.asarray([[5, 6, 7, 0]]), jnp.asarray([3]), 17, 16, 2)
    np.testing.assert_array_equal(inputs, [[17, 17, 5, 6, 7, 0]])
    np.testing.assert_array_equal(targets[0, :4], [5, 6, 7, 16])
    np.testing.assert_array_equal(valid, [[1, 1, 1, 1, 0, 0]])
    with pytest.raises(ValueError, match="3 frames do not make groups of 2"):
        speechlm.ar_training_inputs(jnp.zeros((1, 3), jnp.int32), jnp.asarray([3]), 17, 16, 2)


def test_nar_stage_reads_only_lower_codebooks_and_generates():
    model = VALLENAR(text_vocab_size=20, codebook_size=16, num_quantizers=4, **TINY)
    params = init(model)
    rng = np.random.default_rng(0)
    text, codes = jnp.asarray(rng.integers(0, 20, (2, 5))), jnp.asarray(rng.integers(0, 16, (2, 9, 4)))
    ones = lambda *s: jnp.ones(s, bool)  # noqa: E731
    prompt_lengths, stage = jnp.asarray([3, 2]), jnp.asarray([1, 2])
    logits = model.apply({"params": params}, text, ones(2, 5), codes, ones(2, 9), prompt_lengths, stage)
    assert logits.shape == (2, 9, 16)
    changed = codes.at[0, 3:, 1:].set(0).at[1, 2:, 2:].set(0)  # the targets' codebooks at or above the stage
    again = model.apply({"params": params}, text, ones(2, 5), changed, ones(2, 9), prompt_lengths, stage)
    np.testing.assert_allclose(logits, again, atol=1e-6)
    for read in (codes.at[1, 5, 1].add(1) % 16, codes.at[1, 1, 3].add(1) % 16):  # below the stage; the prompt
        assert not np.allclose(
            logits[1], model.apply({"params": params}, text, ones(2, 5), read, ones(2, 9), prompt_lengths, stage)[1]
        )
    prompt, first = codes[:, :3], codes[:, 3:, 0]
    out = speechlm.generate_nar(
        model, params, text, jnp.asarray([5, 3]), prompt, prompt_lengths, first, jnp.asarray([6, 4])
    )
    assert out.shape == (2, 6, 4)
    np.testing.assert_array_equal(out[..., 0], first)
    np.testing.assert_array_equal(out[1, 4:, 1:], 0)  # past the length
    # Row 1's prompt is 2 frames: its padded third frame is not read, the target follows at once.
    padded = speechlm.generate_nar(
        model, params, text, jnp.asarray([5, 3]), prompt.at[1, 2].set(7), prompt_lengths, first, jnp.asarray([6, 4])
    )
    np.testing.assert_array_equal(out, padded)
    whole = jnp.concatenate([prompt[1:, :2], out[1:, :4]], axis=1)
    stage2 = model.apply(
        {"params": params}, text[1:, :3], ones(1, 3), whole, ones(1, 6), prompt_lengths[1:], jnp.asarray([2])
    )
    np.testing.assert_array_equal(out[1, :4, 2], np.argmax(stage2[0, 2:], -1))


def test_delay_pattern_round_trip(x64):
    codes = jnp.arange(2 * 5 * 3).reshape(2, 5, 3) % 7
    delayed = speechlm.delay_codes(codes, jnp.asarray([5, 3]), special=99)
    assert delayed.shape == (2, 7, 3)
    np.testing.assert_array_equal(delayed[0, :, 2], [99, 99] + list(codes[0, :, 2]))
    np.testing.assert_array_equal(delayed[1, :, 1], [99] + list(codes[1, :3, 1]) + [99] * 3)
    np.testing.assert_array_equal(speechlm.undelay_codes(delayed)[0], codes[0])
    inputs, targets, scored = speechlm.delayed_training_inputs(codes, jnp.asarray([5, 3]), 99)
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
    assert scored.sum() == (5 + 3) * 3


def delayed_model(positions="sin"):
    return speechlm.DelayedLM(
        num_codebooks=3, codebook_size=8, cond_vocab_size=10, dim=32, num_heads=4, num_layers=2, positions=positions
    )


@pytest.mark.parametrize(
    "positions,x64",
    [("sin", False), ("rope", False), pytest.param("rope", True, id="rope-x64", marks=pytest.mark.slow)],
    indirect=["x64"],
)
def test_generate_delayed_greedy_equals_full_forward_greedy(positions, x64):
    model = delayed_model(positions)
    params = init(model)
    cond, cond_len = jnp.asarray([[1, 2, 3], [4, 5, 0]]), jnp.asarray([3, 2])
    prompt = jnp.asarray(np.random.default_rng(0).integers(0, 8, (2, 2, 3)))
    frames = 5
    prompt_len, lengths = jnp.asarray([2, 1]), jnp.asarray([5, 4])
    out = speechlm.generate_delayed(
        model,
        params,
        cond,
        cond_len,
        prompt,
        prompt_len,
        lengths,
        jax.random.PRNGKey(0),
        frames=frames,
        temperature=0.0,
    )
    assert out.shape == (2, frames, 3)
    np.testing.assert_array_equal(out[0, :2], prompt[0])
    np.testing.assert_array_equal(out[1, :1], prompt[1, :1])
    np.testing.assert_array_equal(out[1, 4:], 8)  # past the row's length
    # the same, step by step with the full forward pass over each row's unpadded prefix
    # (filled to one length: the attention is causal, so what follows a position is not seen)
    steps = frames + 2

    @jax.jit
    def forward(x, c):
        positions, mask = jnp.arange(steps)[None], jnp.ones((1, steps), bool)
        return model.apply({"params": params}, x, positions, mask, c, jnp.ones(c.shape, bool))[0]

    for b in range(2):
        c = cond[b : b + 1, : int(cond_len[b])]
        seq = [[8, 8, 8]]  # the start row
        for s in range(steps):
            x = jnp.asarray([seq + [[8, 8, 8]] * (steps - len(seq))], jnp.int32)
            logits = forward(x, c)[len(seq) - 1]
            row = []
            for k in range(3):
                frame = s - k
                if frame < 0 or frame >= int(lengths[b]):
                    row.append(8)
                elif frame < int(prompt_len[b]):
                    row.append(int(prompt[b, frame, k]))
                else:
                    row.append(int(jnp.argmax(logits[k])))
            seq.append(row)
        expected = speechlm.undelay_codes(jnp.asarray([seq[1:]]))[0]
        np.testing.assert_array_equal(out[b], expected)


def test_sampling_filters(x64):
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    keys = jax.random.split(jax.random.PRNGKey(0), 2000)
    assert int(speechlm.sample_logits(keys[0], logits, temperature=0.0)[0]) == 0
    topk = np.asarray(jax.vmap(lambda k: speechlm.sample_logits(k, logits, top_k=2)[0])(keys))
    assert set(topk) == {0, 1}
    topp = np.asarray(jax.vmap(lambda k: speechlm.sample_logits(k, logits, top_p=0.7)[0])(keys))
    assert set(topp) == {0, 1}  # 0.5 < 0.7 needs the second; 0.8 >= 0.7 stops there
    assert set(np.asarray(jax.vmap(lambda k: speechlm.sample_logits(k, logits, top_p=0.1)[0])(keys))) == {0}
    free = np.asarray(jax.vmap(lambda k: speechlm.sample_logits(k, logits)[0])(keys))
    np.testing.assert_allclose(np.bincount(free, minlength=4) / 2000, [0.5, 0.3, 0.15, 0.05], atol=0.04)


def blobs(n_per=200, k=5, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (k, dim)).astype(np.float32)
    labels = np.repeat(np.arange(k), n_per)
    return centres[labels] + rng.normal(0, 0.5, (k * n_per, dim)).astype(np.float32), labels, centres


def test_kmeans_recovers_blobs(x64):
    x, labels, centres = blobs()
    centroids = speechlm.fit(jax.random.PRNGKey(0), x, 5, steps=30, batch_size=256)
    found, _ = speechlm.assign(jnp.asarray(x), centroids)
    found = np.asarray(found)
    for c in range(5):  # each blob is one cluster, and different blobs different clusters
        assert len(set(found[labels == c])) == 1
    assert len(set(found)) == 5
    matched = np.asarray(speechlm.assign(jnp.asarray(centres), centroids)[1])
    assert matched.max() < 0.1


def test_kmeans_update_sharded_equals_single_device():
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    x, _, _ = blobs(n_per=64, k=4)
    centroids = speechlm.kmeans_plus_plus(jax.random.PRNGKey(1), jnp.asarray(x), 4)
    counts = jnp.zeros(4)
    single = speechlm.minibatch_update(centroids, counts, jnp.asarray(x))
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    batch = jax.device_put(jnp.asarray(x), NamedSharding(mesh, P("data")))
    assert len(batch.sharding.device_set) == 8
    sharded = speechlm.minibatch_update(centroids, counts, batch)
    for a, b in zip(single, sharded):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_tokenize_deduplicates_runs(x64):
    centroids = jnp.asarray([[0.0], [10.0], [20.0]])
    feats = jnp.asarray([[[0.1], [0.2], [10.0], [10.1], [0.0], [20.0]], [[20.0], [20.0], [9.0], [0.0], [0.0], [0.0]]])
    valid = jnp.asarray([[True] * 6, [True] * 4 + [False] * 2])
    tokens, lengths = speechlm.tokenize(feats, valid, centroids)
    np.testing.assert_array_equal(tokens, [[0, 0, 1, 1, 0, 2], [2, 2, 1, 0, 0, 0]])
    tokens, lengths = speechlm.tokenize(feats, valid, centroids, deduplicate=True)
    np.testing.assert_array_equal(lengths, [4, 3])
    np.testing.assert_array_equal(tokens[0, :4], [0, 1, 0, 2])
    np.testing.assert_array_equal(tokens[1, :3], [2, 1, 0])


def test_named_configs_parameter_counts():
    counts = {name: speechlm.param_count(speechlm.create(name)) for name in speechlm.VARIANTS}
    assert counts == {
        "valle_ar": 153_781_248,
        "valle_nar": 219_896_832,
        "audiolm_stage": 153_254_912,  # over 1024 semantic units
        "musicgen_small": 319_133_696,
    }
    with pytest.raises(ValueError, match="unknown VALLEAR argument"):
        speechlm.create("valle_ar", layers=3)
