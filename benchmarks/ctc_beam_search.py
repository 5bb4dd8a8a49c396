"""CTC prefix beam search: jaxmodels.ctc.beam_search (one jitted call for the batch)
against pyctcdecode's decode_beams (one utterance at a time, as it runs) on the same
logits, at beams 8 and 32, without a language model.

The logits are CTC-like: peaked on a random transcript spread over the frames with
blanks between, plus noise, so that pruning behaves as on real model output.

    pip install --no-deps pyctcdecode pygtrie   # pyctcdecode pins numpy<2, which jax cannot use
    python benchmarks/ctc_beam_search.py [--batch 32 --frames 200 --vocab 30]
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.ctc import beam_search, ctc_loss

sys.path.insert(0, os.path.dirname(__file__))
from common import time_it  # noqa: E402


def ctc_like_logits(batch, frames, vocab, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=1.0, size=(batch, frames, vocab)).astype(np.float32)
    for b in range(batch):
        tokens = rng.integers(1, vocab, frames // 3)
        for i, token in enumerate(tokens):  # token on one or two frames, then blank
            logits[b, 3 * i : 3 * i + rng.integers(1, 3), token] += 8.0
        logits[b, :, 0] += 4.0
    return jax.nn.log_softmax(jnp.asarray(logits), axis=-1)


def exact_log_prob(log_probs, transcripts):
    """log P(labels | frames), summed over all alignments, of each transcript."""
    width = max(1, max(len(t) for t in transcripts))
    labels = np.zeros((len(transcripts), width), np.int32)
    paddings = np.ones((len(transcripts), width), np.float32)
    for i, t in enumerate(transcripts):
        labels[i, : len(t)], paddings[i, : len(t)] = t, 0.0
    return -np.asarray(ctc_loss(log_probs, jnp.zeros(log_probs.shape[:2]), labels, paddings))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--vocab", type=int, default=30)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()
    from pyctcdecode import build_ctcdecoder

    log_probs = ctc_like_logits(args.batch, args.frames, args.vocab)
    paddings = jnp.zeros(log_probs.shape[:2])
    host_log_probs = np.asarray(log_probs, np.float64)
    symbols = [""] + [chr(ord("a") + i) if i < 26 else chr(ord("A") + i - 26) for i in range(args.vocab - 1)]
    decoder = build_ctcdecoder(symbols)
    device = jax.devices()[0]
    print(f"CTC beam search, B={args.batch} T={args.frames} V={args.vocab}, {device.device_kind}")
    for beam in (8, 32):
        search = jax.jit(lambda x, p: beam_search(x, p, beam_size=beam))
        ours = time_it(lambda: jax.block_until_ready(search(log_probs, paddings)), args.iters)
        result = jax.device_get(search(log_probs, paddings))

        def reference():
            return [decoder.decode_beams(u, beam_width=beam)[0][0] for u in host_log_probs]

        theirs = time_it(reference, max(1, args.iters // 2), warmup=1)
        best = [list(result.labels[b, 0, : result.lengths[b, 0]]) for b in range(args.batch)]
        their_best = [[symbols.index(c) for c in text] for text in reference()]
        agree = np.mean([a == b for a, b in zip(best, their_best)])
        gain = np.mean(exact_log_prob(log_probs, best) - exact_log_prob(log_probs, their_best))
        print(
            f"  beam {beam:2d}: jaxmodels {ours * 1e3:8.1f} ms   pyctcdecode {theirs * 1e3:8.1f} ms   "
            f"({theirs / ours:.1f}x faster); same best transcript on {agree:.0%} of utterances, "
            f"ours {gain:+.3f} nats more probable on average (exact CTC log-probability)"
        )


if __name__ == "__main__":
    main()
