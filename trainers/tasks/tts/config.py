"""The tts section of a config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trainers.config import ConfigError


@dataclass
class TTSConfig:
    """Zero-shot TTS over codec tokens (task: tts): the codec, text, prompts, sampling, evaluation."""

    # The codec whose codes are modelled: a codec run's directory, or official EnCodec
    # weights (codec_weights, with codec_model a name or a JSON file of its config).
    codec_run: str = ""
    codec_weights: str = ""
    codec_model: str = "encodec_24khz"
    bandwidth: float = 0.0  # kbps: how many of the codec's codebooks are modelled (0: all)
    # Where the corpus's codes are cached (<dir>/<split>.npz); default <codec_run>/tokens.
    tokens_dir: str = ""
    text: Literal["chars", "phonemes"] = "chars"  # UTF-8 bytes of the text, or of eSpeak NG's phonemes
    # What the LM is conditioned on: the text, or (a delayed LM) the semantic tokens of the
    # utterance itself, AudioLM's acoustic stage: k-means units of log-mel frames, of a
    # CTC run's encoder states (the run in recognizer_run) or of a HuBERT / wav2vec 2.0
    # layer (hubert: semantic_layer of semantic_encoder, transformers weights or a hubert run, 50 Hz),
    # fitted on the training split and saved as <tokens_dir>/semantic.npz.
    condition: Literal["text", "semantic"] = "text"
    semantic_features: Literal["logmel", "recognizer", "hubert"] = "logmel"
    semantic_encoder: str = ""
    semantic_layer: int = 6
    semantic_clusters: int = 100
    semantic_frame_rate: int = 25
    semantic_deduplicate: bool = False
    max_text_length: int = 128  # text bytes or semantic tokens; longer utterances are skipped (and counted)
    max_frames: int = 512  # codec frames; longer utterances are skipped (and counted)
    # Training: with this probability an example is another utterance of the same voice (the
    # manifest's "voice", else "speaker") followed by this one, texts joined by a space, codes
    # end to end (when both fit): what zero-shot inference feeds the model (a prompt and its
    # continuation), which a corpus of short utterances otherwise never shows it.
    pair_prob: float = 0.0
    # Sampling of the AR model (the NAR stages are greedy, as VALL-E's).
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    # Classifier-free guidance of the VALL-E AR on its text: the text (and word alignment) is
    # dropped from this fraction of training examples, and codes are drawn at this scale
    # (1.0: without guidance; speechlm.generate_ar).
    guidance_dropout: float = 0.0
    guidance_scale: float = 1.0
    # Evaluation: eval_examples held-out sentences spoken in the voice of a prompt utterance
    # of the same speaker (scored by evals: speech_wer and speaker_similarity).
    eval_examples: int = 16
    eval_offset: int = 0  # the prompt pairs evaluated: [eval_offset, eval_offset + eval_examples)
    # A ctc run: the encoder of semantic_features recognizer, and the prompt's transcript for
    # python -m trainers.tts when --prompt-text is not given.
    recognizer_run: str = ""

    def __post_init__(self):
        if self.eval_offset < 0:
            raise ConfigError(f"tts.eval_offset must be at least 0, not {self.eval_offset}")
        if not 0.0 <= self.guidance_dropout < 1.0:
            raise ConfigError(f"tts.guidance_dropout must be in [0, 1), not {self.guidance_dropout}")
