"""python -m trainers.train CONFIG.yaml --workdir DIR [dotted.key=value ...]"""


def main(argv=None):
    import launch
    from trainers.config import parse_command_line

    args, cfg = parse_command_line("python -m trainers.train", __doc__, argv)
    launch.initialize()
    from trainers.loop import train

    metrics = train(cfg, args.workdir)
    print("final: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)


if __name__ == "__main__":
    main()
