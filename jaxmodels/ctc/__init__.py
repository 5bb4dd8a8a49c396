"""CTC: loss, forced alignment, greedy and prefix beam-search decoding, n-gram LMs for
shallow fusion."""

from jaxmodels.ctc.align import Alignment, forced_align, greedy_decode, paddings_from_lengths
from jaxmodels.ctc.beam import BeamSearchResult, beam_search, prefix_beam_search
from jaxmodels.ctc.lm import NGramLM, WordNGramLM, read_arpa, train_ngram, write_arpa
from jaxmodels.ctc.loss import ctc_loss

__all__ = [
    "Alignment",
    "BeamSearchResult",
    "NGramLM",
    "WordNGramLM",
    "beam_search",
    "ctc_loss",
    "forced_align",
    "greedy_decode",
    "paddings_from_lengths",
    "prefix_beam_search",
    "read_arpa",
    "train_ngram",
    "write_arpa",
]
