"""python -m trainers.evaluate CONFIG.yaml --workdir DIR [--checkpoint STEP] [dotted.key=value ...]
   python -m trainers.evaluate CONFIG.yaml --weights FILE [--workdir DIR] [dotted.key=value ...]

Evaluates the newest checkpoint in DIR (or STEP), or upstream weights converted by the
config's family, on the config's eval split over every device and process; prints the
metrics and, given DIR, writes them to DIR/eval_<step>.json (eval_weights.json) and redraws
the task's pictures there.
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
        weights=True,
    )
    launch.initialize()
    import jax

    from trainers.checkpoint import restore_or_load
    from trainers.loop import Trainer

    trainer = Trainer(cfg)
    step, state = restore_or_load(trainer, args.workdir, args.checkpoint, args.weights)
    if args.weights:
        metrics, outputs = trainer.evaluate(state.inference_params)
        name, record = "weights", {"weights": args.weights}
    else:
        metrics, outputs = trainer.evaluate_state(state)
        name, record = step, {"step": step}
    if args.workdir and jax.process_index() == 0:
        os.makedirs(args.workdir, exist_ok=True)
        with open(os.path.join(args.workdir, f"eval_{name}.json"), "w") as f:
            json.dump({**record, **metrics}, f, indent=1)
        trainer.task.write_artifacts(args.workdir, outputs, step)
    label = args.weights if args.weights else f"step {step}"
    print(f"{label}: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)


if __name__ == "__main__":
    main()
