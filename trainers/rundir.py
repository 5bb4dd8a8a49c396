"""A training's run directory: one trainer at a time, and its config kept with its checkpoints.

The lock is an advisory ``flock`` on ``<workdir>/.lock`` held by process 0 while it
trains: the kernel drops it when the process ends, however it ends, so a killed run
never leaves a stale lock. The file names the holder for the error a second trainer gets.
"""

import fcntl
import os
import socket
import time

import yaml

from trainers import config as config_lib
from trainers import files


class WorkdirBusy(RuntimeError):
    pass


class ConfigChanged(ValueError):
    pass


class WorkdirLock:
    def __init__(self, workdir: str):
        self.path = os.path.join(os.path.abspath(workdir), ".lock")
        self.fd = None

    def __enter__(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 1024).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise WorkdirBusy(
                f"{os.path.dirname(self.path)} is in use by {holder}; "
                "two trainers in one workdir would overwrite each other's checkpoints"
            ) from None
        os.ftruncate(fd, 0)
        os.write(
            fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode()
        )
        self.fd = fd
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # releases the lock; the file stays (removing it would race a waiting trainer)
        self.fd = None


def _flatten(tree, prefix=""):
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for k, v in tree.items():
        flat.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return flat


def config_changes(saved: dict, cfg: config_lib.Config) -> list:
    """'key: old -> new' for each value that differs between a saved config and ``cfg``.

    The saved config is read with today's defaults, so a key added since it was written
    is not a change; one that no longer exists is compared as written."""
    try:
        saved = config_lib.to_dict(config_lib.parse(saved))
    except config_lib.ConfigError:
        pass
    old, new = _flatten(saved), _flatten(config_lib.to_dict(cfg))
    missing = object()
    return [
        f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k, missing) != new.get(k, missing)
    ]


def saved_config(workdir: str):
    """The config.yaml a run in ``workdir`` was trained with (a dict), or None."""
    path = os.path.join(workdir, "config.yaml")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return yaml.safe_load(f) or {}


def check_config(workdir: str, cfg: config_lib.Config, allow_change: bool) -> list:
    """The changes from the config a run was trained with; an error unless allowed."""
    saved = saved_config(workdir)
    changes = config_changes(saved, cfg) if saved is not None else []
    if changes and not allow_change:
        raise ConfigChanged(
            f"{workdir} holds a run trained with another config ({'; '.join(changes)}). Nothing was changed; "
            "to resume it with the new values pass --allow-config-change, or train into a new --workdir"
        )
    return changes


def write_config(workdir: str, cfg: config_lib.Config, keep_previous_as: str = ""):
    """Writes config.yaml atomically; the one it replaces is kept as ``keep_previous_as``."""
    path = os.path.join(workdir, "config.yaml")
    if keep_previous_as and os.path.isfile(path):
        os.replace(path, os.path.join(workdir, keep_previous_as))
    files.write_text(path, config_lib.dump(cfg))
