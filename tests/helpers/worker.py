"""A stand-in worker for the launcher tests: python worker.py ACTION [ARGS]

env [SIZE]        print the torchrun variables as one JSON line; while WORLD_SIZE is
                  below SIZE, wait (for an elastic job to grow)
fail RANK CODE    print a few lines, then rank RANK exits with CODE (-N: kills itself
                  with signal N); the others wait for SIGTERM/SIGINT, saying so
wait              print "ready", then wait for SIGTERM/SIGINT and exit 128+signal
stdin             print the line read from stdin
progress          write "half" and a carriage return, then "ask? " without a newline, then wait
split             write five lines, each in two writes 20 ms apart
tty               print whether stdout is a terminal
args              print the arguments after "args" as one JSON line
"""

import json
import os
import signal
import sys
import time

KEYS = [
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_ERROR_FILE",
    "OMP_NUM_THREADS",
    "GLIBC_TUNABLES",
]
action, rank = sys.argv[1], int(os.environ["RANK"])


def exit_on_signal():
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda s, f: (print(f"rank {rank} got {s}", flush=True), sys.exit(128 + s)))


if action == "env":
    print(json.dumps({k: os.environ.get(k) for k in KEYS}), flush=True)
    if len(sys.argv) > 2 and int(os.environ["WORLD_SIZE"]) < int(sys.argv[2]):
        time.sleep(60)
elif action == "fail":
    failing, code = int(sys.argv[2]), int(sys.argv[3])
    if rank != failing:
        exit_on_signal()
    print(f"restart {os.environ['TORCHELASTIC_RESTART_COUNT']}", flush=True)
    if rank == failing:
        time.sleep(1.0)  # the others' handlers in place first
        for i in range(3):
            print(f"rank {rank} line {i}", flush=True)
        print("something broke", file=sys.stderr, flush=True)
        if code < 0:
            os.kill(os.getpid(), -code)
        sys.exit(code)
    time.sleep(60)
elif action == "wait":
    exit_on_signal()
    print("ready", flush=True)
    time.sleep(120)
    sys.exit(1)
elif action == "stdin":
    print(f"read {sys.stdin.readline().strip()}", flush=True)
elif action == "progress":
    for text in ("half\r", "ask? "):
        sys.stdout.write(text)
        sys.stdout.flush()
    time.sleep(60)
elif action == "split":
    for i in range(5):
        for text in (f"rank {rank} ", f"line {i}\n"):
            sys.stdout.write(text)
            sys.stdout.flush()
            time.sleep(0.02)
elif action == "tty":
    print(f"tty {sys.stdout.isatty()}", flush=True)
elif action == "args":
    print(json.dumps(sys.argv[2:]), flush=True)
