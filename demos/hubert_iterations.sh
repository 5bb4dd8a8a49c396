#!/usr/bin/env bash
# HuBERT's two iterations on the built-in corpus: the first predicts k-means units of MFCCs,
# the second k-means units of layer 3 of the first; each run's final evaluation scores its
# layer-3 units against the phones (unit_quality: PNMI, phone and cluster purity; the first
# also the MFCC units'). Each step is resumed where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m trainers.train configs/hubert_speech.yaml --workdir runs/hubert
python -m trainers.train configs/hubert_speech_iter2.yaml --workdir runs/hubert_iter2 "$@"
