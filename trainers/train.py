"""python -m trainers.train CONFIG.yaml --workdir DIR [--allow-config-change] [--start-fresh] [dotted.key=value ...]"""


def add_arguments(parser):
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume a run whose config.yaml differs (kept as config.step<N>.yaml)")
    parser.add_argument("--start-fresh", action="store_true",
                        help="where no checkpoint can be read, move them aside and train from step 0")


def main(argv=None):
    import sys

    import launch
    from trainers.config import parse_command_line

    args, cfg = parse_command_line("python -m trainers.train", __doc__, argv, add_arguments)
    launch.initialize()
    from trainers import rundir
    from trainers.checkpoint import CheckpointMismatch, NoReadableCheckpoint
    from trainers.loop import NonFiniteLoss, train

    try:
        metrics = train(cfg, args.workdir, args.allow_config_change, args.start_fresh)
    except (rundir.ConfigChanged, rundir.WorkdirBusy, CheckpointMismatch, NoReadableCheckpoint, NonFiniteLoss) as e:
        sys.exit(f"error: {e}")
    print("final: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)


if __name__ == "__main__":
    main()
