"""python -m trainers.evaluate CONFIG.yaml --workdir DIR [--checkpoint STEP] [dotted.key=value ...]

Evaluates the newest checkpoint in DIR (or STEP) on the config's eval split, prints the
metrics, writes them to DIR/eval_<step>.json, and redraws the task's pictures.
"""

import json
import os

from trainers.cli import command


@command
def main(argv=None):
    import launch
    from trainers.config import parse_command_line

    args, cfg = parse_command_line(
        "python -m trainers.evaluate",
        __doc__,
        argv,
        lambda p: p.add_argument("--checkpoint", type=int, default=None, help="step to evaluate (default: newest)"),
    )
    launch.initialize()
    import jax

    from trainers.checkpoint import restore_run
    from trainers.loop import Trainer

    trainer = Trainer(cfg)
    step, state = restore_run(trainer, args.workdir, args.checkpoint)
    metrics, outputs = trainer.evaluate_state(state)
    if jax.process_index() == 0:
        with open(os.path.join(args.workdir, f"eval_{step}.json"), "w") as f:
            json.dump({"step": step, **metrics}, f, indent=1)
        trainer.task.write_artifacts(args.workdir, outputs, step)
    print(f"step {step}: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)


if __name__ == "__main__":
    main()
