#!/usr/bin/env bash
# AudioLM on the built-in TTS corpus: the semantic stage over the CosyVoice demo's S3 tokens
# (runs/cosyvoice_tokens, demos/cosyvoice_speech.sh), the coarse and fine stages over the codes
# of the TTS demo's codec (runs/tts_codec, demos/tts_speech.sh), then a held-out prompt
# continued through the three. Each step is resumed where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m trainers.extract codes configs/audiolm_coarse_speech.yaml --codec runs/tts_codec \
    --workdir runs/audiolm_codes --splits train,tts_test
for stage in semantic coarse fine; do
    python -m trainers.train "configs/audiolm_${stage}_speech.yaml" --workdir "runs/audiolm_${stage}"
done
python -m trainers.continue_speech runs/tts_corpus/wav/tts_00000_prompt.wav runs/audiolm_continued.wav \
    --semantic runs/audiolm_semantic --coarse runs/audiolm_coarse --fine runs/audiolm_fine --seconds 2
