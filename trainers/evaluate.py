"""python -m trainers.evaluate CONFIG.yaml --workdir DIR [--checkpoint STEP] [dotted.key=value ...]

Evaluates the newest checkpoint in DIR (or STEP) on the config's eval split, prints the
metrics, writes them to DIR/eval_<step>.json, and redraws the task's pictures.
"""
import argparse
import json
import os
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m trainers.evaluate", description=__doc__)
    parser.add_argument("config")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--checkpoint", type=int, default=None, help="step to evaluate (default: newest)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)

    import launch
    from trainers import config as config_lib

    try:
        cfg = config_lib.load(args.config, args.overrides)
    except config_lib.ConfigError as e:
        sys.exit(f"config error: {e}")
    launch.initialize()
    import jax

    from trainers.checkpoint import Checkpointer
    from trainers.loop import Trainer

    trainer = Trainer(cfg)
    ckpt = Checkpointer(os.path.join(args.workdir, "checkpoints"), async_save=False)
    restored = ckpt.restore(trainer.abstract_state, args.checkpoint)
    if restored is None:
        sys.exit(f"no checkpoint in {ckpt.directory}")
    step, state, _ = restored
    metrics, outputs = trainer.evaluate(state.params)
    if state.ema_params is not None:
        ema_metrics, _ = trainer.evaluate(state.ema_params)
        metrics.update({f"ema_{k}": v for k, v in ema_metrics.items()})
    if jax.process_index() == 0:
        with open(os.path.join(args.workdir, f"eval_{step}.json"), "w") as f:
            json.dump({"step": step, **metrics}, f, indent=1)
        trainer.task.write_artifacts(args.workdir, outputs, step)
    print(f"step {step}: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)
    ckpt.close()


if __name__ == "__main__":
    main()
