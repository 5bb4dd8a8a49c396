#!/usr/bin/env bash
# SpeechTokenizer and USLM on the built-in corpus (docs/speechtokenizer.md): the HuBERT demo's
# first iteration as the teacher, its hidden states averaged over layers for the corpus, the
# SpeechTokenizer distilled from them (configs/speechtokenizer_speech.yaml), the TTS demo's codec
# evaluated again for its RVQ-1's unit quality, then USLM: the TTS demo's VALL-E over the
# SpeechTokenizer's codes (configs/uslm_speech.yaml), whose eval compares with runs/tts's.
# Needs the TTS demo's runs (demos/tts_speech.sh); each step is resumed where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m trainers.train configs/hubert_speech.yaml --workdir runs/hubert
python -m trainers.extract units configs/speechtokenizer_speech.yaml --encoder runs/hubert --layer avg --features \
    --workdir runs/hubert_avg --splits train,test
python -m trainers.train configs/speechtokenizer_speech.yaml --workdir runs/speechtokenizer
python -m trainers.evaluate configs/tts_speech_codec.yaml --workdir runs/tts_codec
python -m trainers.train configs/uslm_speech.yaml --workdir runs/uslm "$@"
