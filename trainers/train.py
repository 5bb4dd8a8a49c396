"""python -m trainers.train CONFIG.yaml --workdir DIR [dotted.key=value ...]"""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m trainers.train", description=__doc__)
    parser.add_argument("config", help="experiment YAML (configs/...)")
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics and pictures go here; resumes from it")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. optimizer.lr=1e-3")
    args = parser.parse_intermixed_args(argv)

    import launch
    from trainers import config as config_lib

    try:
        cfg = config_lib.load(args.config, args.overrides)
    except config_lib.ConfigError as e:
        sys.exit(f"config error: {e}")
    launch.initialize()
    from trainers.loop import train

    metrics = train(cfg, args.workdir)
    print("final: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)


if __name__ == "__main__":
    main()
