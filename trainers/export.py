"""A pretraining run's encoder in transformers' format, for transformers users and for
model.init_from (a recogniser fine-tuned from it):

    python -m trainers.export RUN_DIR --out DIR [--model_type hubert|wav2vec2]

RUN_DIR is a hubert or wav2vec2 run; DIR receives model.safetensors (its inference params'
encoder under transformers' HubertModel or Wav2Vec2Model keys) and config.json, the pair
transformers' from_pretrained and jaxmodels.ssl.load_pretrained read.
"""

import argparse
import json
import os

from trainers import files
from trainers.cli import command


@command
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m trainers.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a hubert or wav2vec2 run's directory")
    parser.add_argument("--out", required=True, help="the folder for model.safetensors and config.json")
    parser.add_argument("--model_type", default="hubert", choices=("hubert", "wav2vec2"))
    args = parser.parse_args(argv)
    from safetensors.numpy import save_file

    from jaxmodels import ssl
    from trainers.tasks._pretraining import load_encoder

    encoder, variables = load_encoder(args.run)
    state_dict, config = ssl.to_transformers(encoder, variables, args.model_type)
    os.makedirs(args.out, exist_ok=True)
    files.write_with(os.path.join(args.out, "model.safetensors"), lambda tmp: save_file(state_dict, tmp))
    files.write_text(os.path.join(args.out, "config.json"), json.dumps(config, indent=1) + "\n")
    print(f"wrote {args.out}/model.safetensors ({ssl.param_count(encoder):,} parameters) and config.json")


if __name__ == "__main__":
    main()
