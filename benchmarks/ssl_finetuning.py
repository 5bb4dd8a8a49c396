"""Low-resource recognition on a pretrained encoder: the HuBERT encoder of a pretraining run,
fine-tuned with CTC on a tenth of the built-in corpus's labelled utterances, against the same
model trained from scratch on them; word error rates on the held-out voices.

    python benchmarks/ssl_finetuning.py [--pretrained runs/hubert] [--fraction 0.1] [--out runs/ssl_finetuning]

The labelled subset is the first fraction of the training manifest (a manifest folder beside
the corpus, its audio paths absolute); both runs use configs/hubert_ctc_speech.yaml, one with
model.init_from the exported encoder, one without.
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CONFIG = os.path.join(ROOT, "configs", "hubert_ctc_speech.yaml")


def subset(corpus: str, fraction: float, out: str) -> None:
    """out/train.jsonl (the first fraction of corpus/train.jsonl) and out/test.jsonl, paths absolute."""
    os.makedirs(out, exist_ok=True)
    for split in ("train", "test"):
        with open(os.path.join(corpus, f"{split}.jsonl")) as f:
            records = [json.loads(line) for line in f]
        if split == "train":
            records = records[: max(1, int(len(records) * fraction))]
        for r in records:
            r["source"] = os.path.abspath(os.path.join(corpus, r["source"]))
        with open(os.path.join(out, f"{split}.jsonl"), "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))


def run(*args):
    subprocess.run([sys.executable, "-m", *args], cwd=ROOT, check=True)


def final(workdir: str) -> dict:
    """The run's last evaluation."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [row for row in map(json.loads, f) if "eval/wer_greedy" in row][-1]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pretrained", default="runs/hubert")
    p.add_argument("--corpus", default="runs/speech_corpus")
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--out", default="runs/ssl_finetuning")
    args = p.parse_args()
    data = os.path.join(args.out, "labelled")
    subset(args.corpus, args.fraction, data)
    export = os.path.join(args.out, "encoder")
    run("trainers.export", args.pretrained, "--out", export)
    overrides = ["data.source=manifest", f"data.path={data}"]
    weights = os.path.join(export, "model.safetensors")
    run(
        "trainers.train",
        CONFIG,
        "--workdir",
        os.path.join(args.out, "pretrained"),
        *overrides,
        f"model.init_from={weights}",
    )
    run("trainers.train", CONFIG, "--workdir", os.path.join(args.out, "scratch"), *overrides, "model.init_from=")
    print("| encoder | WER greedy | WER beam |")
    print("|---|---|---|")
    for name in ("pretrained", "scratch"):
        m = final(os.path.join(args.out, name))
        print(f"| {name} | {100 * m['eval/wer_greedy']:.2f}% | {100 * m['eval/wer_beam']:.2f}% |")


if __name__ == "__main__":
    main()
