"""Files written atomically: a reader, or a run killed mid-write, finds the old file or the
new one, never a part of one. The temporary name is the process's own, so that processes
of one run may write one file at once."""

import os

import numpy as np


def write_with(path: str, write) -> None:
    """``write(tmp_path)`` then the temporary file renamed to ``path`` (removed if write fails)."""
    tmp = f"{path}.{os.getpid()}.tmp{os.path.splitext(path)[1]}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror}") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    write_with(path, write)


def write_npz(path: str, compressed: bool = False, **arrays) -> None:
    """np.savez (or savez_compressed) of arrays."""
    write_with(path, lambda tmp: (np.savez_compressed if compressed else np.savez)(tmp, **arrays))


def write_npy(path: str, array) -> None:
    """np.save of one array (path ending in .npy)."""
    write_with(path, lambda tmp: np.save(tmp, array))
