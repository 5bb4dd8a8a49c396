"""Zero-shot text-to-speech over codec tokens (task: tts): VALL-E's AR + NAR, or one delayed LM.

Data: a speech split (text + audio) becomes (text bytes, codec codes). The codec, a
codec run (tts.codec_run) or official EnCodec weights, encodes each split once into
tts.tokens_dir/<split>.npz; a cache made by another codec or text setting is rebuilt.
Text is the UTF-8 bytes of the transcript or of its eSpeak NG phonemes (vocabulary 256).

Training (model.name "valle"): the AR model's next-code loss over the first codebook
(with EOS) plus the NAR model's loss on one random stage k in 2..K per utterance, given
a random prefix of the same utterance (up to half) as its acoustic prompt, as
lifeiteng/vall-e trains it. model.name "delayed" (or a named speechlm config such as
musicgen_small): one DelayedLM over all codebooks, text as its prefix, or with
tts.condition semantic the utterance's own semantic tokens (AudioLM's acoustic stage;
trainers/data/semantic.py, fitted on the training split into tts.tokens_dir/semantic.npz; its
centroids are kept in each checkpoint and restored with it).
With tts.pair_prob an example is two utterances of one voice end to end, the shape of a
prompt and its continuation. With the AR's word_alignment (VALL-E R's monotonic alignment,
over words) each utterance's record needs "word_starts" (seconds; the built-in corpus has
eSpeak NG's own): the groups of codes from one start to the next are that word's, the
first utterance of a pair is left unaligned as an inference prompt is, and phonemes are
taken word by word, so that the text's words are the transcript's. With
tts.guidance_dropout the AR is also trained without its text (and words) on that fraction
of examples, so that sampling can be guided by the text (tts.guidance_scale: classifier-
free guidance, speechlm.generate_ar).

Evaluation: teacher-forced losses and accuracies on the eval split, then zero-shot TTS
as CosyVoice evaluates it: for tts.eval_examples held-out sentences (from pair
tts.eval_offset on: pairs past the reported ones can serve to choose decoding settings),
the text is the prompt's transcript and the sentence, the acoustic prompt is another
utterance of the same speaker, and the generated speech (AR sampled, NAR greedy, codec
decoder), the real recordings and the recordings through the codec are the outputs that
evals score (speech_wer: a recogniser's word error rate; speaker_similarity). WAVs and
spectrograms of prompt, reference and generated speech go into the workdir. With
semantic conditioning the sentence's tokens (and length) come from its real recording:
a resynthesis in the prompt's voice.

Modules: config (the tts section), models, tokens (the codec and the token caches), words
(word alignment), losses, synthesis, task (TTSTask, made of those parts).
"""

from trainers.data.speech import AudioDataConfig
from trainers.tasks.tts.config import TTSConfig
from trainers.tasks.tts.task import TTSTask

SECTIONS = {"data": AudioDataConfig, "tts": TTSConfig}
TASK = TTSTask
