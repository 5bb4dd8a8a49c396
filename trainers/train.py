"""python -m trainers.train CONFIG.yaml --workdir DIR [--allow-config-change] [--start-fresh] [dotted.key=value ...]"""

from trainers.cli import command


def add_arguments(parser):
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume a run whose config.yaml differs (kept as config.step<N>.yaml)",
    )
    parser.add_argument(
        "--start-fresh",
        action="store_true",
        help="where no checkpoint can be read, move them aside and train from step 0",
    )


@command
def main(argv=None):
    import launch
    from trainers.config import parse_command_line

    args, cfg = parse_command_line("python -m trainers.train", __doc__, argv, add_arguments)
    launch.initialize()
    from trainers.loop import train

    metrics = train(cfg, args.workdir, args.allow_config_change, args.start_fresh)
    print("final: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)


if __name__ == "__main__":
    main()
