"""n-gram language models for shallow fusion in the CTC beam search.

`train_ngram` estimates an interpolated Kneser-Ney model (Chen & Goodman, 1998; one
discount per order) from tokenised sentences; `write_arpa` / `read_arpa` store it in the
ARPA text format that KenLM and SRILM read and write. `NGramLM.create` turns a model
into a device-side automaton for `jaxmodels.ctc.beam.beam_search`:

  * a node per history the model knows (the empty history is the root);
  * from each node, arcs for the symbols seen after that history, sorted by symbol,
    with log P(symbol | history) and the node of the longest known history that follows;
  * per node, its backoff weight and backoff node (the history without its oldest symbol).

Scoring a symbol walks at most `order` backoff steps, each a fixed-length binary search
over the node's arcs, so it vectorises over every (utterance, hypothesis, candidate).
`NGramLM`'s symbols are the CTC tokens (a character LM over characters, a word LM when
the tokens are words, a piece LM over sub-words), queried once per emitted token;
`WordNGramLM` fuses a word model over a character or sub-word vocabulary, scoring each
word as it is completed. Probabilities are natural logs on device; ARPA files hold log10.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Sequence

import flax.struct
import jax.numpy as jnp
import numpy as np

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
_LN10 = math.log(10.0)

# An n-gram model as ARPA holds it: for each order, n-gram tuple -> (log10 prob, log10 backoff).
Model = dict[int, dict[tuple[str, ...], tuple[float, float]]]


def train_ngram(sentences: Iterable[Sequence[str]], order: int, discount: float = 0.75) -> Model:
    """Interpolated Kneser-Ney estimate of an `order`-gram model over the symbols of
    `sentences` (each a sequence of symbols, e.g. the characters of a line)."""
    if order < 1 or not 0.0 < discount < 1.0:
        raise ValueError(f"need order >= 1 and 0 < discount < 1, got order={order}, discount={discount}")
    raw = [collections.Counter() for _ in range(order + 1)]  # raw[k]: k-gram -> occurrences
    vocab = {EOS, UNK}
    for sentence in sentences:
        symbols = [BOS] + list(sentence) + [EOS]
        vocab.update(sentence)
        for i in range(1, len(symbols)):  # the symbol predicted; histories stop at <s>
            for k in range(1, min(order, i + 1) + 1):
                raw[k][tuple(symbols[i - k + 1 : i + 1])] += 1
    # Below the top order, an n-gram counts the distinct symbols seen before it
    # (continuation counts), except those that start at <s>: they keep raw counts.
    counts = [None] * order + [raw[order]]
    for k in range(order - 1, 0, -1):
        counts[k] = collections.Counter({g: c for g, c in raw[k].items() if g[0] == BOS})
        for gram in raw[k + 1]:
            counts[k][gram[1:]] += 1

    model: Model = {}
    lower: dict[tuple[str, ...], float] = {}  # P of the order below (interpolated, final)
    uniform = 1.0 / len(vocab)
    for n in range(1, order + 1):
        by_history: dict[tuple[str, ...], dict[str, int]] = collections.defaultdict(dict)
        for gram, c in counts[n].items():
            by_history[gram[:-1]][gram[-1]] = c
        probs = {}
        for history, followers in by_history.items():
            total = sum(followers.values())
            gamma = discount * len(followers) / total  # the mass left for the lower order
            for symbol, c in followers.items():
                back = uniform if n == 1 else lower[history[1:] + (symbol,)]
                probs[history + (symbol,)] = max(c - discount, 0.0) / total + gamma * back
            if n == 1:
                for symbol in vocab - followers.keys():  # <unk>: the uniform share only
                    probs[(symbol,)] = gamma * uniform
            else:  # the ARPA backoff weight of the history is exactly that mass
                model[n - 1][history] = (model[n - 1][history][0], math.log10(gamma))
        model[n] = {gram: (math.log10(p), 0.0) for gram, p in probs.items()}
        if n == 1:
            model[1][(BOS,)] = (-99.0, 0.0)  # never predicted; its backoff is set at n = 2
        lower = probs
    return model


def write_arpa(model: Model, path) -> None:
    """ARPA separates symbols by whitespace: a character model writes the space as a
    visible symbol ("|" or "▁"), which the CTC vocabulary then uses as well."""
    for grams in model.values():
        for gram in grams:
            if any(not symbol or symbol != "".join(symbol.split()) for symbol in gram):
                raise ValueError(f"ARPA symbols cannot be empty or hold whitespace: {gram!r}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n\\data\\\n")
        for n in sorted(model):
            f.write(f"ngram {n}={len(model[n])}\n")
        for n in sorted(model):
            f.write(f"\n\\{n}-grams:\n")
            for gram, (logp, bow) in sorted(model[n].items()):
                tail = f"\t{bow:.6f}" if n < len(model) and bow != 0.0 else ""
                f.write(f"{logp:.6f}\t{' '.join(gram)}{tail}\n")
        f.write("\n\\end\\\n")


def read_arpa(path) -> Model:
    """Read an ARPA file (as KenLM's lmplz or SRILM's ngram-count write them)."""
    model: Model = {}
    section = None
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("ngram ") or line == "\\data\\":
                continue
            if line == "\\end\\":
                break
            if line.startswith("\\") and line.endswith("-grams:"):
                section = int(line[1 : line.index("-")])
                model[section] = {}
                continue
            if section is None:
                raise ValueError(f"{path}:{number}: not an ARPA file (no \\data\\ section before {line!r})")
            fields = line.split()
            if len(fields) not in (section + 1, section + 2):
                raise ValueError(f"{path}:{number}: expected {section} symbols for a {section}-gram: {line!r}")
            bow = float(fields[section + 1]) if len(fields) == section + 2 else 0.0
            model[section][tuple(fields[1 : section + 1])] = (float(fields[0]), bow)
    if 1 not in model:
        raise ValueError(f"{path}: no \\1-grams: section")
    return model


@flax.struct.dataclass
class NGramLM:
    """An n-gram model as a device-side automaton (see the module docstring). Pass it to
    beam_search(lm=...); it is a pytree of arrays, so it crosses jit as an argument."""

    arc_start: jnp.ndarray  # (nodes + 1,) int32: arcs of node i are arc_start[i]:arc_start[i + 1]
    arc_symbol: jnp.ndarray  # (arcs,) int32, ascending within each node
    arc_logp: jnp.ndarray  # (arcs,) float32, natural log
    arc_next: jnp.ndarray  # (arcs,) int32
    backoff: jnp.ndarray  # (nodes,) float32, natural log
    backoff_node: jnp.ndarray  # (nodes,) int32
    token_symbol: jnp.ndarray  # (V,) int32: the LM symbol of each CTC token (<unk> if unknown)
    start_node: int = flax.struct.field(pytree_node=False)
    eos_symbol: int = flax.struct.field(pytree_node=False)
    order: int = flax.struct.field(pytree_node=False)
    search_steps: int = flax.struct.field(pytree_node=False)

    @classmethod
    def create(cls, model: Model, tokens: Sequence[str]) -> NGramLM:
        """`model` from train_ngram or read_arpa; `tokens[i]` is the string of CTC token i
        (the blank's entry is never scored)."""
        if (UNK,) not in model[1]:
            raise ValueError("the n-gram model has no <unk> unigram; it is needed for tokens it does not know")
        symbols = sorted({s for grams in model.values() for gram in grams for s in gram})
        symbol_id = {s: i for i, s in enumerate(symbols)}
        histories = [()] + sorted(g for n, grams in model.items() if n < len(model) for g in grams)
        node_id = {h: i for i, h in enumerate(histories)}

        def node_of(history):  # longest suffix of history that is a node
            while history not in node_id:
                history = history[1:]
            return node_id[history]

        arcs = []  # (node, symbol, logp, next)
        for grams in model.values():
            for gram, (logp, _) in grams.items():
                if gram[:-1] in node_id:
                    arcs.append(
                        (
                            node_id[gram[:-1]],
                            symbol_id[gram[-1]],
                            logp * _LN10,
                            node_of(gram[-len(model) + 1 :] if len(model) > 1 else ()),
                        )
                    )
        arcs.sort()
        arc_node = np.array([a[0] for a in arcs], np.int64)
        arc_start = np.searchsorted(arc_node, np.arange(len(histories) + 1)).astype(np.int32)
        backoff = np.zeros(len(histories), np.float32)
        backoff_node = np.zeros(len(histories), np.int32)
        for h, i in node_id.items():
            if h:
                backoff[i] = model[len(h)][h][1] * _LN10
                backoff_node[i] = node_of(h[1:])
        unk = symbol_id[UNK]
        token_symbol = np.array([symbol_id.get(t, unk) for t in tokens], np.int32)
        most_arcs = int(np.max(np.diff(arc_start))) if len(arcs) else 1
        return cls(
            arc_start=jnp.asarray(arc_start),
            arc_symbol=jnp.asarray(np.array([a[1] for a in arcs], np.int32)),
            arc_logp=jnp.asarray(np.array([a[2] for a in arcs], np.float32)),
            arc_next=jnp.asarray(np.array([a[3] for a in arcs], np.int32)),
            backoff=jnp.asarray(backoff),
            backoff_node=jnp.asarray(backoff_node),
            token_symbol=jnp.asarray(token_symbol),
            start_node=node_of((BOS,)),
            eos_symbol=symbol_id[EOS],
            order=len(model),
            search_steps=max(1, math.ceil(math.log2(most_arcs + 1))),
        )

    def initial_state(self) -> int:
        return self.start_node

    def score(self, state, token):
        """log P(token | state) and the next state, elementwise over broadcast arrays."""
        return self._score_symbol(state, self.token_symbol[token])

    def final_score(self, state):
        return self._score_symbol(state, jnp.full_like(state, self.eos_symbol))[0]

    def _score_symbol(self, state, symbol):
        state, symbol = jnp.broadcast_arrays(state, symbol)
        total = jnp.zeros(state.shape, jnp.float32)
        found = jnp.zeros(state.shape, bool)
        next_state = state
        for _ in range(self.order):
            lo, hi = self.arc_start[state], self.arc_start[state + 1]
            for _ in range(self.search_steps):  # first arc with arc_symbol >= symbol
                mid = (lo + hi) // 2
                go_right = (mid < hi) & (self.arc_symbol[jnp.minimum(mid, self.arc_symbol.shape[0] - 1)] < symbol)
                lo, hi = jnp.where(go_right, mid + 1, lo), jnp.where(go_right, hi, mid)
            arc = jnp.minimum(lo, self.arc_symbol.shape[0] - 1)
            hit = ~found & (lo < self.arc_start[state + 1]) & (self.arc_symbol[arc] == symbol)
            total = total + jnp.where(hit, self.arc_logp[arc], jnp.where(found, 0.0, self.backoff[state]))
            next_state = jnp.where(hit, self.arc_next[arc], next_state)
            found = found | hit
            state = jnp.where(found, state, self.backoff_node[state])
        return total, next_state


_HASH_PRIMES = (0x01000193, 0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F)


def _text_hash(text: str, prime: int) -> int:
    h = 0
    for c in text:
        h = (h * prime + ord(c)) % 2**32
    return h


@flax.struct.dataclass
class WordNGramLM:
    """A word n-gram fused over a character or sub-word CTC vocabulary: a word is scored
    when the token after it starts a new word (the separator, e.g. "|", or a piece
    beginning with "\u2581") and at the end. The state carries the word-LM node and a
    rolling hash of the letters of the word being spelt; the hash of each vocabulary word
    is found by binary search (the multiplier is chosen so that no two vocabulary words
    share a hash; a spelt word that is not in the vocabulary scores as <unk>)."""

    words: NGramLM  # over word symbols
    word_hash: jnp.ndarray  # (W,) uint32, ascending
    word_symbol: jnp.ndarray  # (W,) int32
    token_starts_word: jnp.ndarray  # (V,) bool
    token_has_letters: jnp.ndarray  # (V,) bool
    token_multiplier: jnp.ndarray  # (V,) uint32: prime ** len(letters)
    token_hash: jnp.ndarray  # (V,) uint32: hash of the token's letters
    unk_symbol: int = flax.struct.field(pytree_node=False)

    @classmethod
    def create(cls, model: Model, tokens: Sequence[str], separator: str = "|", piece_start: str = "\u2581"):
        """`model`: a word n-gram (train_ngram over word lists, or read_arpa); `tokens`: the
        CTC vocabulary, whose entries are letters, the separator, or sub-word pieces
        (special tokens such as <blank> or <|en|> spell nothing)."""
        words = NGramLM.create(model, [])
        symbols = sorted({s for grams in model.values() for gram in grams for s in gram})
        symbol_id = {s: i for i, s in enumerate(symbols)}  # as NGramLM.create numbers them
        vocabulary = [w for w in symbols if w not in (BOS, EOS, UNK)]
        for prime in _HASH_PRIMES:
            hashes = [_text_hash(w, prime) for w in vocabulary]
            if len(set(hashes)) == len(hashes):
                break
        else:
            raise ValueError("no collision-free word hash for this vocabulary")
        order = np.argsort(np.array(hashes, np.uint64))
        letters = [t[len(piece_start) :] if t.startswith(piece_start) else t for t in tokens]
        special = [t == separator or (t.startswith("<") and t.endswith(">")) for t in tokens]
        letters = ["" if s else text for s, text in zip(special, letters)]
        starts = [t == separator or t.startswith(piece_start) for t in tokens]
        return cls(
            words=words,
            word_hash=jnp.asarray(np.array(hashes, np.uint64)[order].astype(np.uint32)),
            word_symbol=jnp.asarray(np.array([symbol_id[w] for w in vocabulary], np.int32)[order]),
            token_starts_word=jnp.asarray(np.array(starts, bool)),
            token_has_letters=jnp.asarray(np.array([bool(x) for x in letters], bool)),
            token_multiplier=jnp.asarray(
                np.array([pow(prime, len(x), 2**32) for x in letters], np.uint64).astype(np.uint32)
            ),
            token_hash=jnp.asarray(np.array([_text_hash(x, prime) for x in letters], np.uint64).astype(np.uint32)),
            unk_symbol=symbol_id[UNK],
        )

    def initial_state(self):
        return {"node": jnp.int32(self.words.start_node), "spelt": jnp.uint32(0), "open": jnp.bool_(False)}

    def _word_symbol(self, spelt):
        i = jnp.clip(jnp.searchsorted(self.word_hash, spelt), 0, self.word_hash.shape[0] - 1)
        return jnp.where(self.word_hash[i] == spelt, self.word_symbol[i], self.unk_symbol)

    def score(self, state, token):
        node, spelt, open_, token = jnp.broadcast_arrays(state["node"], state["spelt"], state["open"], token)
        starts, has_letters = self.token_starts_word[token], self.token_has_letters[token]
        finish = starts & open_
        logp, next_node = self.words._score_symbol(node, self._word_symbol(spelt))
        logp = jnp.where(finish, logp, 0.0)
        node = jnp.where(finish, next_node, node)
        spelt = jnp.where(starts, jnp.uint32(0), spelt)
        spelt = jnp.where(has_letters, spelt * self.token_multiplier[token] + self.token_hash[token], spelt)
        open_ = jnp.where(starts, has_letters, open_ | has_letters)
        return logp, {"node": node, "spelt": spelt, "open": open_}

    def final_score(self, state):
        logp, node = self.words._score_symbol(state["node"], self._word_symbol(state["spelt"]))
        logp, node = jnp.where(state["open"], logp, 0.0), jnp.where(state["open"], node, state["node"])
        return logp + self.words._score_symbol(node, jnp.full_like(node, self.words.eos_symbol))[0]
