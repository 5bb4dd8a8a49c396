#!/usr/bin/env bash
# The zero-shot TTS demo: the recogniser that scores the speech (evals: speech_wer, the
# README's main job), the 100 Hz codec whose codes the LM models, the speaker embedder of
# evals: speaker_similarity, then VALL-E. About two hours on 2 CPU cores; each step is
# resumed where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m trainers.train configs/ctc_speech.yaml --workdir runs/speech
python -m trainers.train configs/tts_speech_codec.yaml --workdir runs/tts_codec
[ -f runs/speaker.npz ] || python -m trainers.speaker configs/tts_speech.yaml --out runs/speaker.npz
python -m trainers.train configs/tts_speech.yaml --workdir runs/tts "$@"
