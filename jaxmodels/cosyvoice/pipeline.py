"""CosyVoice end to end: text and a voice in, speech out, as upstream's CosyVoice class runs it
without streaming (cosyvoice/cli/frontend.py and model.py).

The prompt recording gives three things: its S3 tokens (16 kHz) and CAM++ x-vector, and its
mel (Matcha-TTS's features at the flow's rate). The LM draws speech tokens for the text after
the prompt's transcript and tokens, in the x-vector's voice; the flow decoder turns them into
mel frames continuing the prompt's; HiFT vocodes them. Modes as upstream's inference_*:
``zero_shot`` (prompt recording and its transcript), ``cross_lingual`` (the recording only: the
LM sees no prompt, the flow still continues the recording's mel), ``sft`` (a speaker's
stored x-vector, no recording) and ``instruct`` (sft with an instruction as the LM's prompt
text, the LM without the x-vector; the -Instruct model's). CosyVoice 2 (variant cosyvoice2)
runs the same way: its Qwen2 LM reads no x-vector, its causal flow decoder makes two mel
frames a token at 24 kHz. The text goes through upstream's text frontend (text.normalize, as
upstream runs it without ttsfrd or wetext: numbers spelt out, Chinese tidied) and is cut at
sentence ends into pieces, each spoken and the audio joined; a chain whose LM was trained here
on its corpus's transcripts as written (``text_frontend`` False) only cuts the text at sentence
ends into pieces of at most 80 ids.

    voice = pipeline.CosyVoice.load("CosyVoice-300M/", "cosyvoice_300m")      # or cosyvoice2 (CosyVoice2-0.5B/)
    audio = voice.zero_shot("Hello there.", "the prompt's words", prompt_16k, prompt_22k, jax.random.key(0))
"""

import dataclasses
import functools
import os
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels import speechlm
from jaxmodels.cosyvoice import campplus, flow, hift, llm, s3tokenizer, text


@dataclasses.dataclass(frozen=True)
class Variant:
    """A released model's parts: their configurations and the files a model directory holds."""

    llm: str
    flow: str
    hift: str
    s3tokenizer: str
    text: str  # the text tokenizer: <ranks>.tiktoken, or the folder of Qwen2's tokenizer.json
    n_fft: int = 1024  # the prompt mel's FFT and window (Matcha's features at the flow's rate)


VARIANTS = {
    "cosyvoice_300m": Variant(
        "llm_cosyvoice_300m",
        "flow_cosyvoice_300m",
        "hift_cosyvoice_300m",
        "speech_tokenizer_v1",
        "multilingual.tiktoken",
    ),
    "cosyvoice_300m_25hz": Variant(
        "llm_cosyvoice_300m_25hz",
        "flow_cosyvoice_300m_25hz",
        "hift_cosyvoice_300m",
        "speech_tokenizer_v1_25hz",
        "multilingual_zh_ja_yue_char_del.tiktoken",
    ),
    "cosyvoice2": Variant(  # CosyVoice2-0.5B: 24 kHz
        "llm_cosyvoice2", "flow_cosyvoice2", "hift_cosyvoice2", "speech_tokenizer_v2_25hz", "CosyVoice-BlankEN", 1920
    ),
}
# What a model directory holds: upstream's llm.pt, flow.pt and hift.pt; the S3 tokenizer as the
# s3tokenizer package's state_dict (<name>.pt or .safetensors); 3D-Speaker's CAM++
# (campplus_cn_common.bin); the text tokenizer (Variant.text).
CAMPPLUS = "campplus_cn_common"
MAX_PIECE_TOKENS = 80  # upstream's token_max_n
SENTENCE = re.compile(r"[^.!?;。！？；]*(?:[.!?;。！？；]+|$)\s*")  # a sentence and the space after it


def _find(directory: str, stem: str, suffixes=(".pt", ".safetensors")) -> str:
    for suffix in suffixes:
        path = os.path.join(directory, stem + suffix)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"{directory} holds no {' or '.join(stem + s for s in suffixes)}")


def split_text(tokenizer, sentence_text: str, max_piece_tokens: int) -> list[str]:
    """Pieces of at most ``max_piece_tokens`` text ids, cut after sentence ends (a longer
    sentence is a piece of its own); the text between them is kept as it is."""
    pieces, current = [], ""
    for sentence in SENTENCE.findall(sentence_text):
        joined = current + sentence
        if current.strip() and len(text.encode(tokenizer, joined.strip())) > max_piece_tokens:
            pieces.append(current.strip())
            joined = sentence
        current = joined
    return [*pieces, current.strip()] if current.strip() else pieces


@dataclasses.dataclass
class CosyVoice:
    """The parts. ``tokenize`` and ``embed`` take 16 kHz audio (B, T) and lengths (B,): the S3
    tokens and their counts (released: s3tokenizer.tokenize; or a recogniser trained with the
    quantizer inside), and the x-vectors (released: campplus.embed; or any speaker embedder
    the LM and flow were trained with). ``mel``: audio (B, T) at the output rate -> the flow's
    mel frames (B, frames, C), the features it was trained on. ``text_tokenizer`` as
    jaxmodels.cosyvoice.text loads. ``text_frontend``: the released models' text frontend
    (text.normalize), or, False, the text as written, cut at sentence ends (split_text).
    ``flow_temperature``: the scale of the noise the flow decoder's ODE starts from (upstream's
    1.0; Matcha-TTS synthesises at 0.667). ``flow_prompt``: zero-shot and cross-lingual give the
    flow decoder the prompt's tokens and mel to continue (upstream's); False, the prompt's
    x-vector alone, as sft does (the LM still continues the prompt in zero-shot)."""

    lm: llm.TransformerLM | llm.Qwen2LM
    lm_params: dict
    decoder: flow.Flow
    decoder_variables: dict
    vocoder: hift.HiFTGenerator
    vocoder_variables: dict
    tokenize: Callable
    embed: Callable
    mel: Callable
    text_tokenizer: object
    text_frontend: bool = True
    flow_temperature: float = 1.0
    flow_prompt: bool = True

    @classmethod
    def load(cls, directory: str, variant: str = "cosyvoice_300m"):
        if variant not in VARIANTS:
            raise ValueError(f"CosyVoice variant {variant!r}: one of {', '.join(VARIANTS)}")
        v = VARIANTS[variant]
        lm, lm_variables = llm.load(_find(directory, "llm"), v.llm)
        decoder, decoder_variables = flow.load(_find(directory, "flow"), v.flow)
        vocoder, vocoder_variables = hift.load(_find(directory, "hift"), v.hift)
        tokenizer, tokenizer_variables = s3tokenizer.load(_find(directory, v.s3tokenizer), v.s3tokenizer)
        speaker, speaker_variables = campplus.load(_find(directory, CAMPPLUS, (".bin", ".safetensors")))
        text_tokenizer = text.load(os.path.join(directory, v.text))
        size = lm.config.llm.vocab_size if isinstance(lm, llm.Qwen2LM) else lm.config.text_token_size
        if text_tokenizer.n_vocab > size:
            raise ValueError(f"{v.text} has {text_tokenizer.n_vocab} text ids; {v.llm} reads {size}")
        return cls(
            lm,
            lm_variables["params"],
            decoder,
            decoder_variables,
            vocoder,
            vocoder_variables,
            functools.partial(s3tokenizer.tokenize, tokenizer, tokenizer_variables),
            functools.partial(campplus.embed, speaker, speaker_variables),
            released_mel(decoder.config, v.n_fft),
            text_tokenizer,
        )

    @property
    def sample_rate(self) -> int:
        """The output's (and the prompt mel's) rate."""
        return self.vocoder.config.sample_rate

    def prompt(self, wav_16k: np.ndarray, wav_out: np.ndarray):
        """(S3 tokens (1, N), mel (1, frames, 80), x-vector (1, 192)) of a prompt recording, given at 16 kHz
        and at the output rate. Where the flow makes token_mel_ratio frames of a token (CosyVoice
        2), both are cut to whole tokens' worth, as upstream's frontend does."""
        audio, lengths = jnp.asarray(wav_16k[None], jnp.float32), jnp.array([len(wav_16k)])
        tokens, count = self.tokenize(audio, lengths)
        xvector = self.xvector(wav_16k)
        c = self.decoder.config
        mel = self.mel(jnp.asarray(wav_out[None], jnp.float32))
        tokens = tokens[:, : int(count[0])]
        if c.token_mel_ratio:
            n = min(mel.shape[1] // c.token_mel_ratio, tokens.shape[1])
            tokens, mel = tokens[:, :n], mel[:, : n * c.token_mel_ratio]
        return tokens, mel, xvector

    def xvector(self, wav_16k: np.ndarray):
        """The speaker embedding (1, D) of a recording at 16 kHz."""
        return self.embed(jnp.asarray(wav_16k[None], jnp.float32), jnp.array([len(wav_16k)]))

    def _ids(self, sentence: str):
        """(ids (1, N), their count (1,), the word of each (1, N): words between spaces, what an LM
        with word_alignment reads)."""
        ids = text.encode(self.text_tokenizer, sentence)
        return jnp.asarray([ids], jnp.int32), jnp.array([len(ids)]), jnp.asarray(speechlm.text_words(ids)[None])

    def _speak(self, piece, rng, lm_prompt, flow_prompt, lm_xvector, flow_xvector):
        """One piece of text: (text ids, prompt text ids, prompt tokens) -> audio at the output rate."""
        ids, n, words = self._ids(piece)
        (prompt_ids, prompt_n, prompt_words), (prompt_tokens, prompt_count) = lm_prompt
        k_lm, k_flow, k_voc = jax.random.split(rng, 3)
        tokens, count = llm.generate(
            self.lm,
            self.lm_params,
            k_lm,
            ids,
            n,
            prompt_ids,
            prompt_n,
            prompt_tokens,
            prompt_count,
            lm_xvector,
            max_new_tokens=20 * int(n[0]),  # upstream's max_token_text_ratio
            text_words=words,
            prompt_text_words=prompt_words,
        )
        tokens = tokens[:, : int(count[0])]
        flow_tokens, flow_mel = flow_prompt
        mel = jax.jit(self.decoder.apply, static_argnames="method")(
            self.decoder_variables,
            k_flow,
            tokens,
            flow_tokens,
            flow_mel,
            flow_xvector,
            self.flow_temperature,
            method=flow.Flow.inference,
        )
        audio, _ = jax.jit(self.vocoder.apply)(self.vocoder_variables, mel, k_voc)
        return np.asarray(audio[0])

    def _text(self, sentence_text: str, split: bool = True):
        """The text as the LM reads it: pieces to speak one at a time, or (split False) whole."""
        if self.text_frontend:
            return text.normalize(self.text_tokenizer, sentence_text, split)
        return split_text(self.text_tokenizer, sentence_text, MAX_PIECE_TOKENS) if split else sentence_text

    def _say(self, sentence_text, rng, lm_prompt, flow_prompt, lm_xvector, flow_xvector):
        pieces = self._text(sentence_text)
        if not pieces:
            raise ValueError("the text to speak is empty")
        keys = jax.random.split(rng, len(pieces))
        return np.concatenate(
            [self._speak(p, k, lm_prompt, flow_prompt, lm_xvector, flow_xvector) for p, k in zip(pieces, keys)]
        )

    def zero_shot(self, sentence_text: str, prompt_text: str, wav_16k, wav_out, rng):
        """The text in the recording's voice, continuing it (upstream's inference_zero_shot)."""
        tokens, mel, xvector = self.prompt(wav_16k, wav_out)
        lm_prompt = (self._ids(self._text(prompt_text, split=False)), (tokens, jnp.array([tokens.shape[1]])))
        return self._say(sentence_text, rng, lm_prompt, self._flow_prompt(tokens, mel), xvector, xvector)

    def cross_lingual(self, sentence_text: str, wav_16k, wav_out, rng):
        """The text in the recording's voice, the LM without the prompt (upstream's inference_cross_lingual)."""
        tokens, mel, xvector = self.prompt(wav_16k, wav_out)
        return self._say(sentence_text, rng, _no_prompt(), self._flow_prompt(tokens, mel), xvector, xvector)

    def sft(self, sentence_text: str, xvector, rng):
        """The text in a stored speaker's voice: its x-vector alone (upstream's inference_sft)."""
        xvector = jnp.asarray(xvector, jnp.float32).reshape(1, -1)
        return self._say(sentence_text, rng, _no_prompt(), self._no_flow_prompt(), xvector, xvector)

    def instruct(self, sentence_text: str, instruction: str, xvector, rng):
        """The text as ``instruction`` asks, in a stored speaker's voice (upstream's inference_instruct,
        the -Instruct model's): the instruction is the LM's prompt text, and the LM sees no x-vector."""
        xvector = jnp.asarray(xvector, jnp.float32).reshape(1, -1)
        lm_prompt = (self._ids(self._text(instruction, split=False)), _no_prompt()[1])
        return self._say(sentence_text, rng, lm_prompt, self._no_flow_prompt(), None, xvector)

    def _flow_prompt(self, tokens, mel):
        return (tokens, mel) if self.flow_prompt else self._no_flow_prompt()

    def _no_flow_prompt(self):
        return jnp.zeros((1, 0), jnp.int32), jnp.zeros((1, 0, self.decoder.config.output_size))


def released_mel(flow_config: flow.FlowConfig, n_fft: int):
    """The released models' prompt features: Matcha's mel at the flow's rate, window n_fft."""
    return functools.partial(
        hift.mel_spectrogram, sample_rate=flow_config.sample_rate, n_fft=n_fft, hop=flow_config.hop_length, win=n_fft
    )


def _no_prompt():
    """(no prompt text: ids, count, words), (no prompt tokens: tokens, count)."""
    ids, count = jnp.zeros((1, 1), jnp.int32), jnp.zeros((1,), jnp.int32)
    return (ids, count, jnp.full((1, 1), -1, jnp.int32)), (ids, count)
