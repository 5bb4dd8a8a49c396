"""jaxrun: torchrun's command line, starting JAX workers.

    jaxrun [torchrun flags] (-m module | script.py) [args ...]

Takes torchrun's flags (both spellings, --nproc-per-node and --nproc_per_node), gives
each worker torchrun's environment, and supervises the workers as torch elastic
does (launch.agent). Inside a worker, `launch.initialize()` turns that environment
into `jax.distributed.initialize`. Where this differs from torchrun:

- --nnodes MIN:MAX (c10d backend): a round starts when MIN nodes have joined and
  --rdzv_conf last_call_timeout (default 30 s) has passed, or MAX have; a node that
  arrives later makes the running group checkpoint, stop and start again on more
  nodes. A JAX program's process count is fixed while it runs, so every change of
  membership is a restart from the last checkpoint (which restores onto any mesh).
- MASTER_ADDR/MASTER_PORT given to the workers address the JAX coordinator: node 0
  picks a free port for it in each round; --master_port is the agents' own store.
- Workers are always fresh interpreters (--start_method is not offered); with
  --run_path the script runs through runpy.run_path in one.
- Worker output always passes through the agent (bytes as they come, through a pty
  where the console is a terminal): console lines carry torchrun's --tee prefix
  [<role><local rank>]: even without --tee. Logs are torchrun's layout,
  <log_dir>/<run_id>_<random>/attempt_<round>/<local rank>/{stdout,stderr}.log, where
  a round counts every start of the group (restarts and changes of membership).
- --logs_specs (a torch class) is refused; --rdzv_conf keys that only torch's stores
  use are accepted and said to have no effect.
"""

import argparse
import os
import signal
import sys
import uuid

from launch.agent import Agent, Job, free_port, log

C10D_PORT = 29400
# torch's --rdzv_conf keys: those jaxrun honours, and those it accepts without effect (and why).
RDZV_CONF_HONOURED = ["join_timeout", "last_call_timeout", "timeout"]
RDZV_CONF_IGNORED = {
    "read_timeout": "the agents' store waits up to join_timeout",
    "close_timeout": "a round closes when the last agent leaves",
    "keep_alive_interval": "agents ping every second",
    "keep_alive_max_attempt": "a node silent for 30 s has failed",
    "is_host": "the agent that can bind the endpoint hosts the store",
    "use_libuv": "jaxrun's store is its own",
}


def _dual(parser, name, **kwargs):
    """--foo-bar and --foo_bar, as torchrun spells its flags; the default from $PET_FOO_BAR
    where it is set, as torchrun reads every flag."""
    names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    env = os.environ.get(f"PET_{name.upper()}")
    if env is not None:
        kwargs["default"] = env.lower() in ("1", "true", "yes") if kwargs.get("action") == "store_true" else env
    parser.add_argument(*names, dest=name, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxrun", description="torchrun's command line for JAX programs")
    _dual(p, "nnodes", default="1:1", help="number of nodes, or MIN:MAX (elastic, c10d backend)")
    _dual(p, "nproc_per_node", default="1", help="workers per node: an integer, gpu, cpu or auto")
    _dual(p, "rdzv_backend", default="static", choices=["static", "c10d"], help="rendezvous backend")
    _dual(p, "rdzv_endpoint", default="", help="HOST[:PORT] of the rendezvous store")
    _dual(p, "rdzv_id", default="none", help="id shared by the nodes of one job")
    _dual(p, "rdzv_conf", default="", help="KEY=VALUE,...: join_timeout, last_call_timeout (seconds)")
    _dual(p, "standalone", action="store_true", help="one node, with a store on a free local port")
    _dual(p, "max_restarts", type=int, default=0, help="group restarts after failures before giving up")
    _dual(p, "monitor_interval", type=float, default=0.1, help="seconds between checks of the workers")
    _dual(p, "role", default="default", help="name of this node's workers' role")
    p.add_argument("-m", "--module", action="store_true", help="run the script as a module (python -m)")
    _dual(p, "no_python", action="store_true", help="run the script as an executable, without python")
    _dual(p, "run_path", action="store_true", help="run the script with runpy.run_path")
    _dual(p, "log_dir", default=None, help="directory for the per-rank logs")
    p.add_argument(
        "-r",
        "--redirects",
        default=os.environ.get("PET_REDIRECTS", "0"),
        help="streams to the log files only: 0-3, or LOCAL_RANK:STD,...",
    )
    p.add_argument(
        "-t",
        "--tee",
        default=os.environ.get("PET_TEE", "0"),
        help="streams to the log files and the console (as --redirects)",
    )
    _dual(p, "local_ranks_filter", default="", help="local ranks shown on the console, e.g. 0,1")
    _dual(p, "node_rank", type=int, default=0, help="this node's rank (static backend)")
    _dual(p, "master_addr", default="127.0.0.1", help="host of node 0 (static backend)")
    _dual(p, "master_port", type=int, default=None, help="port of the agents' store on node 0 (default 29500)")
    _dual(p, "local_addr", default=None, help="this node's address as the others should reach it")
    _dual(
        p,
        "shutdown_timeout",
        type=float,
        default=None,
        help="seconds the workers get to exit after a signal before they are killed (default 30)",
    )
    _dual(
        p,
        "signals_to_handle",
        default="SIGTERM,SIGINT,SIGHUP,SIGQUIT",
        help="signals passed on to the workers (any other that ends jaxrun kills them)",
    )
    _dual(p, "logs_specs", default=None, help="torch's LogsSpecs plug-in: not available (see --log_dir)")
    p.add_argument("training_script", help="the script, module (-m) or executable (--no_python) to run")
    p.add_argument("training_script_args", nargs=argparse.REMAINDER)
    return p


def parse_nnodes(value: str) -> tuple[int, int]:
    low, _, high = value.partition(":")
    try:
        low, high = int(low), int(high or low)
    except ValueError:
        raise ValueError(f"--nnodes={value!r}: expected N or MIN:MAX") from None
    if not 0 < low <= high:
        raise ValueError(f"--nnodes={value!r}: expected 0 < MIN <= MAX")
    return low, high


def count_gpus() -> int:
    from launch import visible_gpus

    return visible_gpus(dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS") or "cuda"))


def parse_nproc(value: str) -> int:
    if value.isdigit() and int(value) > 0:
        return int(value)
    if value == "gpu":
        if not count_gpus():
            raise ValueError("--nproc_per_node=gpu, but no NVIDIA GPU (or no jax CUDA plugin) is visible")
        return count_gpus()
    if value == "cpu":
        return os.cpu_count()
    if value == "auto":
        return count_gpus() or os.cpu_count()
    raise ValueError(f"--nproc_per_node={value!r}: expected a positive integer, gpu, cpu or auto")


def parse_streams(value: str, nproc: int, flag: str) -> dict:
    """'3' (every local rank) or '0:1,1:2' -> {local_rank: bits}, 1 stdout and 2 stderr."""
    try:
        if ":" not in value:
            bits = int(value)
            mapping = {rank: bits for rank in range(nproc)}
        else:
            mapping = {int(k): int(v) for k, v in (item.split(":") for item in value.split(","))}
    except ValueError:
        raise ValueError(f"{flag}={value!r}: expected 0-3, or LOCAL_RANK:STD,... with STD 0-3") from None
    if any(not 0 <= b <= 3 for b in mapping.values()):
        raise ValueError(f"{flag}={value!r}: a stream choice is 0 (none), 1 (stdout), 2 (stderr) or 3 (both)")
    return mapping


def parse_signals(value: str) -> tuple:
    names = [v.strip() for v in value.split(",") if v.strip()]
    try:
        return tuple(signal.Signals[n if n.startswith("SIG") else f"SIG{n}"] for n in names)
    except KeyError as e:
        raise ValueError(f"--signals_to_handle={value!r}: {e.args[0]} is not a signal name") from None


def parse_conf(value: str) -> dict:
    conf = {}
    for item in filter(None, value.split(",")):
        key, sep, val = item.partition("=")
        if not sep:
            raise ValueError(f"--rdzv_conf: {item!r} is not KEY=VALUE")
        conf[key.strip()] = val.strip()
    return conf


def _endpoint(value: str, default_port: int) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or "]" in port:  # no port given (or a bare IPv6 address)
        host, port = value, default_port
    return host.strip("[]"), int(port)


def worker_command(args) -> list:
    if args.run_path:
        runner = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
        return [sys.executable, "-u", "-c", runner, args.training_script, *args.training_script_args]
    if args.no_python:
        if args.module:
            raise ValueError("--no_python and --module cannot be used together")
        return [args.training_script, *args.training_script_args]
    module = ["-m"] if args.module else []
    return [sys.executable, "-u", *module, args.training_script, *args.training_script_args]


def job_from_args(args) -> Job:
    min_nodes, max_nodes = parse_nnodes(args.nnodes)
    nproc = parse_nproc(args.nproc_per_node)
    conf = parse_conf(args.rdzv_conf)
    unknown = set(conf) - set(RDZV_CONF_HONOURED) - set(RDZV_CONF_IGNORED)
    if unknown:
        raise ValueError(
            f"--rdzv_conf: unknown keys {sorted(unknown)}; "
            f"known: {', '.join(RDZV_CONF_HONOURED + list(RDZV_CONF_IGNORED))}"
        )
    for key in sorted(set(conf) & set(RDZV_CONF_IGNORED)):
        log(f"--rdzv_conf {key}: accepted, no effect ({RDZV_CONF_IGNORED[key]})")
    if args.logs_specs:
        raise ValueError(
            f"--logs_specs={args.logs_specs}: torch's LogsSpecs plug-ins are torch classes that jaxrun "
            "cannot load; it writes torchrun's default layout under --log_dir"
        )
    backend, run_id = args.rdzv_backend, args.rdzv_id
    if args.standalone:
        backend, min_nodes, max_nodes, run_id = "c10d", 1, 1, str(uuid.uuid4())
        endpoint = ("127.0.0.1", free_port())
    elif backend == "static":
        if min_nodes != max_nodes:
            raise ValueError("--nnodes MIN:MAX needs --rdzv_backend=c10d (the static backend has a fixed size)")
        if not 0 <= args.node_rank < max_nodes:
            raise ValueError(f"--node_rank={args.node_rank} is not in 0..{max_nodes - 1}")
        endpoint = _endpoint(args.rdzv_endpoint or args.master_addr, args.master_port or 29500)
    else:
        if not args.rdzv_endpoint:
            raise ValueError("--rdzv_backend=c10d needs --rdzv_endpoint HOST[:PORT]")
        endpoint = _endpoint(args.rdzv_endpoint, C10D_PORT)
    log_dir = args.log_dir
    redirects = parse_streams(args.redirects, nproc, "--redirects")
    tee = parse_streams(args.tee, nproc, "--tee")
    filt = {int(r) for r in args.local_ranks_filter.split(",") if r.strip()} or None
    return Job(
        command=worker_command(args),
        nproc=nproc,
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        backend=backend,
        endpoint=endpoint,
        node_rank=args.node_rank,
        run_id=run_id,
        role=args.role,
        max_restarts=args.max_restarts,
        monitor_interval=args.monitor_interval,
        log_dir=log_dir,
        redirects=redirects,
        tee=tee,
        local_ranks_filter=filt,
        join_timeout=float(conf.get("join_timeout", conf.get("timeout", 600))),
        last_call_timeout=float(conf.get("last_call_timeout", 30)),
        shutdown_timeout=args.shutdown_timeout or float(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", 30)),
        local_addr=args.local_addr,
        signals=parse_signals(args.signals_to_handle),
    )


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        job = job_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    if "OMP_NUM_THREADS" not in os.environ and job.nproc > 1:
        log("OMP_NUM_THREADS is set to 1 for each worker (as torchrun does); set it yourself to tune")
    try:
        return Agent(job).run()
    except (ConnectionError, TimeoutError, RuntimeError) as e:
        log(f"error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
