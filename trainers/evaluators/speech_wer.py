"""Intelligibility of generated speech: the word and character error rates of a recogniser's
transcripts, as CosyVoice and VALL-E evaluate zero-shot TTS (with Whisper or Paraformer;
here a CTC run of this project).

Reads the outputs "tts_text" (the sentences) and the audio lists "tts_generated" ->
wer/cer, "tts_reference" (the real recordings) -> wer_reference/cer_reference and
"tts_codec" (the recordings through the codec: the ceiling a codec LM can reach) ->
wer_codec/cer_codec, each where present (16 kHz waveforms).
"""

from dataclasses import dataclass

from trainers.config import EvalConfig
from trainers.evaluators.text import error_rates

AUDIO = {"tts_generated": "", "tts_reference": "_reference", "tts_codec": "_codec"}


@dataclass
class SpeechWERConfig(EvalConfig):
    run: str = ""  # a ctc run's directory


class SpeechWER:
    def __init__(self, cfg: SpeechWERConfig, task):
        from trainers.tasks.ctc import Recognizer

        self.recognizer = Recognizer(cfg.run)

    def __call__(self, outputs, params):
        metrics = {}
        for key, suffix in AUDIO.items():
            if key in outputs:
                rates = error_rates(outputs["tts_text"], self.recognizer.transcribe(outputs[key]))
                metrics.update({f"{name}{suffix}": value for name, value in rates.items()})
        return metrics, {}


CONFIG, EVALUATOR = SpeechWERConfig, SpeechWER
