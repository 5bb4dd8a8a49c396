#!/usr/bin/env bash
# The CosyVoice demo (configs/cosyvoice_speech.yaml): the recogniser and speaker embedder that
# score it (shared with the TTS demo), the S3 tokenizer trained inside a recogniser, the S3
# tokens and x-vectors of the TTS corpus, the flow decoder, the HiFT vocoder, then the LM,
# whose eval speaks the TTS demo's held-out pairs through the chain, and the LM trained with
# speaking-style instructions (configs/cosyvoice_instruct_speech.yaml). Each step is resumed
# where it stopped. The TTS corpus (runs/tts_corpus) is the TTS demo's (demos/tts_speech.sh
# synthesises it; the extraction below does too when it is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m trainers.train configs/ctc_speech.yaml --workdir runs/speech
[ -f runs/speaker.npz ] || python -m trainers.speaker configs/tts_speech.yaml --out runs/speaker.npz
python -m trainers.train configs/cosyvoice_s3_speech.yaml --workdir runs/cosyvoice_s3
python -m trainers.extract s3tokens configs/cosyvoice_speech.yaml --s3tokenizer runs/cosyvoice_s3 \
    --workdir runs/cosyvoice_tokens --splits train,tts_test
python -m trainers.extract xvectors configs/cosyvoice_speech.yaml --speaker runs/speaker.npz \
    --workdir runs/cosyvoice_xvectors --splits train,tts_test
python -m trainers.train configs/cosyvoice_flow_speech.yaml --workdir runs/cosyvoice_flow
# HiFT's discriminators a quarter as wide, to train on 2 CPU cores in under two hours (1.1-1.6 s a step).
python -m trainers.train configs/hift_speech.yaml --workdir runs/cosyvoice_hift data.path=runs/tts_corpus \
    data.corpus_train_size=8000 hift.disc_channel_divisor=4 train.steps=4000
python -m trainers.train configs/cosyvoice_speech.yaml --workdir runs/cosyvoice_llm "$@"
python -m trainers.train configs/cosyvoice_instruct_speech.yaml --workdir runs/cosyvoice_instruct
