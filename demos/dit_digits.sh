#!/usr/bin/env bash
# The DiT demo: the MambaOut digits classifier that scores the samples (evals:
# classifier_agreement), then the DiT. About five CPU minutes; a finished run is resumed
# at its end, so running this again only evaluates.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m trainers.train configs/mambaout_digits.yaml --workdir runs/digits
python -m trainers.train configs/dit_digits.yaml --workdir runs/dit_digits "$@"
