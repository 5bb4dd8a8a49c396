"""The errors a person can act on, and how every command reports them: one line, exit 1.

A bad config (ConfigError), a bad input file (InputError), a file that cannot be read or
written (OSError), and a run directory that cannot be trained in as asked are reported
as ``error: <message>`` naming the file, key or value. Anything else is a bug and keeps
its traceback.
"""

import functools
import sys


class InputError(ValueError):
    """Input a person gave that cannot be used: a file, what it holds, or a value in it."""


def read_weights(path: str, what: str = "weights") -> dict:
    """The state_dict at ``path`` (jaxmodels.nn.load_state_dict), or an InputError naming the file."""
    from jaxmodels.nn import load_state_dict

    try:
        return load_state_dict(path)
    except Exception as e:  # missing, truncated or foreign: safetensors and torch raise their own types
        raise InputError(f"cannot load {what} {path}: {e or type(e).__name__}") from e


def _user_errors():
    from launch import LaunchError
    from trainers import rundir
    from trainers.checkpoint import CheckpointMismatch, NoReadableCheckpoint
    from trainers.config import ConfigError
    from trainers.loop import NonFiniteLoss

    return (
        ConfigError,
        InputError,
        OSError,
        CheckpointMismatch,
        NoReadableCheckpoint,
        rundir.ConfigChanged,
        rundir.WorkdirBusy,
        NonFiniteLoss,
        LaunchError,
    )


def command(main):
    """Decorates a command's main(argv=None): the errors above end it with one line."""

    @functools.wraps(main)
    def guarded(argv=None):
        try:
            return main(argv)
        except Exception as e:
            if isinstance(e, _user_errors()):
                sys.exit(f"error: {e}")
            raise

    return guarded
