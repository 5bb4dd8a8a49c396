"""SenseVoice-Small's released files, small and random, for the SenseVoice tests and the
scripts in tests/data that make their references (which must agree on them):

- build: a SentencePiece model laid out as chn_jpn_yue_eng_ko_spectok.bpe.model: 25,055
  pieces, <unk> (the CTC blank) at 0, and the language, emotion and text-normalisation tags
  at the ids the official model.py hard-codes (<|en|> 24885, <|EMO_UNKNOWN|> 25009, ...);
  the other pieces are the built-in corpus's words and letters, then fillers;
- random_weights: a state_dict drawn from a seed;
- write_am_mvn: FunASR's am.mvn layout.
"""

from sentencepiece import sentencepiece_model_pb2 as spm_pb2

VOCAB_SIZE = 25055
TAGS = {  # official ids (FunASR's SenseVoiceSmall: lid_int_dict, emo_dict, textnorm_int_dict)
    24884: "<|zh|>",
    24885: "<|en|>",
    24888: "<|yue|>",
    24892: "<|ja|>",
    24896: "<|ko|>",
    24992: "<|nospeech|>",
    25001: "<|HAPPY|>",
    25002: "<|SAD|>",
    25003: "<|ANGRY|>",
    25004: "<|NEUTRAL|>",
    25009: "<|EMO_UNKNOWN|>",
    25016: "<|withitn|>",
    25017: "<|woitn|>",
    # event ids are not in the official code: these stand in for them
    24993: "<|Speech|>",
    24994: "<|BGM|>",
    24995: "<|Laughter|>",
    24996: "<|Applause|>",
}
WORDS = "zero one two three four five six seven eight nine anna ben has a red blue cat dog".split()


def build(path):
    """Writes the model to ``path``; returns its pieces in id order."""
    normal = [f"\u2581{w}" for w in WORDS] + ["\u2581"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = ["<unk>", "<s>", "</s>"] + normal
    fillers = iter(f"\u2581x{i}" for i in range(VOCAB_SIZE))
    while len(pieces) < VOCAB_SIZE:
        pieces.append(TAGS.get(len(pieces)) or next(fillers))
    model = spm_pb2.ModelProto()
    model.trainer_spec.model_type = spm_pb2.TrainerSpec.UNIGRAM
    model.trainer_spec.vocab_size = VOCAB_SIZE
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = True
    model.normalizer_spec.remove_extra_whitespaces = True
    model.normalizer_spec.escape_whitespaces = True
    kinds = {"<unk>": spm_pb2.ModelProto.SentencePiece.UNKNOWN, "<s>": spm_pb2.ModelProto.SentencePiece.CONTROL}
    kinds["</s>"] = spm_pb2.ModelProto.SentencePiece.CONTROL
    for i, piece in enumerate(pieces):
        entry = model.pieces.add()
        entry.piece = piece
        # Words outscore their letters, so that encoding takes whole words where it can.
        entry.score = -float(len(piece) == 1) - 0.001 * i
        entry.type = kinds.get(piece, spm_pb2.ModelProto.SentencePiece.NORMAL)
        if piece in TAGS.values():
            entry.type = spm_pb2.ModelProto.SentencePiece.USER_DEFINED
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return pieces


def random_weights(shapes: dict, center=None, seed: int = 0) -> dict:
    """float32 weights for a SenseVoiceSmall state_dict of these shapes, drawn in key order:
    N(0, 1/fan_in) matrices, 1 + 0.1 N norm scales, 0.1 N biases. The CTC head's biases favour
    the tags and words (and <|EMO_UNKNOWN|> most), so that greedy decoding emits them; with
    ``center``, the encoder's mean output, they also cancel its logits, which would otherwise
    pick the same token at almost every frame."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        if name.endswith(("norm1.weight", "norm2.weight", "after_norm.weight", "tp_norm.weight")):
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif len(shape) == 1:
            value = 0.1 * rng.standard_normal(shape)
        else:
            value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        out[name] = value.astype(np.float32)
    bias = out["ctc.ctc_lo.bias"]
    if center is not None:
        bias -= out["ctc.ctc_lo.weight"] @ np.asarray(center, np.float32)
    bias[list(TAGS)] += 9.0
    bias[3 : 3 + len(WORDS)] += 9.0
    bias[25009] += 0.5
    return out


def write_am_mvn(path, mean, inverse_std):
    """FunASR's am.mvn layout (a Kaldi nnet in text form): -mean after <AddShift>, 1/std after <Rescale>."""
    row = lambda v: "<LearnRateCoef> 0 [ " + " ".join(f"{x:.6g}" for x in v) + " ]"  # noqa: E731
    n = len(mean)
    with open(path, "w") as f:
        f.write(f"<Nnet>\n<Splice> {n} {n}\n[ 0 ]\n<AddShift> {n} {n}\n{row(-mean)}\n<Rescale> {n} {n}\n")
        f.write(f"{row(inverse_std)}\n</Nnet>\n")
