"""Reading official PyTorch checkpoints and placing them into Flax variable trees.

A family's converter says, key by key, where an upstream tensor goes and how its
layout changes; `assign_state_dict` then checks the result against the model's own
parameter tree, so a checkpoint of the wrong model fails with the keys and shapes
at fault named, never with a silently half-filled model.
"""

import contextlib
import contextvars
import json
import mmap
import os
import struct
import zipfile
from collections.abc import Callable, Mapping

import flax
import jax
import ml_dtypes
import numpy as np

StateDict = dict[str, np.ndarray]


def load_state_dict(path: str) -> StateDict:
    """Reads a state_dict from .safetensors (no torch needed) or a torch pickle (.pt/.pth/.bin).

    Both are memory-mapped where the format allows (safetensors; torch's zip format, which
    torch.save writes since 1.6): an array is read from disk only where it is used, so a
    process placing its slices of the sharded parameters reads those slices, not the file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        return _mapped_safetensors(path)
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"reading the torch pickle {path} needs torch (pip install 'jaxmodels[torch]'); "
            "a .safetensors file needs no torch"
        ) from e
    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    # Training scripts wrap the weights ({"model": ...}, {"state_dict": ...}); take them out.
    for wrapper in ("model", "state_dict", "ema"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state_dict")
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in obj.items()}


# safetensors' dtype names (its format description, huggingface/safetensors).
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}  # fmt: skip


def _mapped_safetensors(path: str) -> StateDict:
    """The tensors of a .safetensors file (an 8-byte little-endian header length, the JSON
    header, then the data) as views of a copy-on-write map of the file. safetensors' own
    reader copies every tensor into memory and has no bfloat16 for numpy."""
    with open(path, "rb") as f:
        start = f.read(8)
        size = struct.unpack("<Q", start)[0] if len(start) == 8 else -1
        if not 0 < size <= os.path.getsize(path) - 8:
            raise ValueError(f"{path}: not a safetensors file (no header of a fitting length)")
        try:
            header = json.loads(f.read(size))
        except ValueError as e:
            raise ValueError(f"{path}: not a safetensors file (its header does not parse: {e})") from None
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, which numpy cannot hold")
        dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
        begin, end = info["data_offsets"]
        count = int(np.prod(info["shape"]))
        if end - begin != count * dtype.itemsize or 8 + size + end > len(mapped):
            raise ValueError(f"{path}: tensor {name} does not lie within the file (truncated?)")
        value = np.frombuffer(mapped, dtype, count, 8 + size + begin).reshape(info["shape"])
        # Floats in float32, as from a torch pickle: the others are read and converted here.
        out[name] = value.astype(np.float32) if info["dtype"] in ("F64", "F16", "BF16") else value
    return out


def assign_state_dict(
    state_dict: Mapping[str, np.ndarray],
    target_shapes,
    key_map: Callable[[str, np.ndarray], tuple[tuple[str, ...], np.ndarray]],
    ignore: Callable[[str], bool] = lambda key: False,
):
    """Builds a variable tree shaped as ``target_shapes`` from ``state_dict``.

    ``key_map(key, value)`` returns the Flax path and the value in Flax layout.
    Raises ValueError naming every unexpected key, missing parameter and shape mismatch.
    """
    expected = {
        k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(target_shapes)).items()
    }
    out, seen, unexpected, mismatched = {}, set(), [], []
    for key, value in state_dict.items():
        if ignore(key):
            continue
        path, new = key_map(key, value if isinstance(value, StackedLayers) else np.asarray(value))
        if path not in expected:
            unexpected.append(f"{key} (-> {'/'.join(path)})")
            continue
        seen.add(path)
        if tuple(new.shape) != expected[path]:
            mismatched.append(f"{key}: checkpoint {tuple(new.shape)} vs model {expected[path]}")
        else:
            out[path] = new.astype(np.float32, copy=False) if np.issubdtype(new.dtype, np.floating) else new
    missing = ["/".join(p) for p in expected if p not in seen]
    problems = []
    if unexpected:
        problems.append("unexpected keys: " + _listing(unexpected))
    if missing:
        problems.append("missing parameters: " + _listing(missing))
    if mismatched:
        problems.append("shape mismatches: " + _listing(mismatched, sep="; "))
    if problems:
        raise ValueError("state_dict does not fit the model:\n  " + "\n  ".join(problems))
    return jax.tree.map(
        lambda v: v if isinstance(v, StackedLayers) else np.asarray(v), flax.traverse_util.unflatten_dict(out)
    )


class StackedLayers:
    """Layers' arrays, one parameter of a scanned module, stacked along a new leading axis
    only where read: indexing reads just the layers and slices asked for (what places a
    sharded parameter reads each device's), np.asarray all of them."""

    def __init__(self, layers: list):
        self.layers = layers
        self.shape = (len(layers), *layers[0].shape)
        self.dtype = np.result_type(*layers)
        self.ndim = len(self.shape)

    def __getitem__(self, index):
        index = index if isinstance(index, tuple) else (index,)
        first, rest = (index[0], index[1:]) if index else (slice(None), ())
        if isinstance(first, (int, np.integer)):
            return np.asarray(self.layers[first][rest], self.dtype)
        return np.stack([np.asarray(layer[rest], self.dtype) for layer in self.layers[first]])

    def __array__(self, dtype=None, copy=None):
        return np.stack(self.layers).astype(dtype or self.dtype, copy=False)

    def astype(self, dtype, copy=True):
        if np.dtype(dtype) == self.dtype and not copy:
            return self
        return np.asarray(self).astype(dtype)


_LAZY_LAYERS = contextvars.ContextVar("lazy_layers", default=False)


@contextlib.contextmanager
def lazy_layers():
    """Within it, stack_layers leaves its stacks unread (StackedLayers) and assign_state_dict
    keeps them so, for a caller that places each device's slices (Trainer.load_weights): a
    scanned parameter of a memory-mapped file is then read only where a device needs it."""
    token = _LAZY_LAYERS.set(True)
    try:
        yield
    finally:
        _LAZY_LAYERS.reset(token)


def stack_layers(key: str, by_index: Mapping[int, np.ndarray], length: int):
    """One parameter of `length` repeated layers, given by layer index (each in its Flax
    layout), stacked along a new leading axis (a scanned module's layout); other indices, or
    layers of different shapes, are an error naming `key`. Under lazy_layers, a StackedLayers."""
    if sorted(by_index) != list(range(length)):
        raise ValueError(f"{key}: layers {sorted(by_index)}, the model has {length}")
    layers = [by_index[i] for i in range(length)]
    if len({np.shape(layer) for layer in layers}) > 1:
        raise ValueError(f"{key}: layers of shapes {sorted({np.shape(layer) for layer in layers})}")
    return StackedLayers(layers) if _LAZY_LAYERS.get() else np.stack(layers)


def _listing(items, sep=", ", limit=12):
    more = f"{sep}... and {len(items) - limit} more" if len(items) > limit else ""
    return sep.join(items[:limit]) + more


def torch_to_flax_leaf(name: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """Renames and re-lays-out one leaf: Linear/Conv weights, norm weights, biases."""
    if name == "bias":
        return "bias", value
    if name == "weight":
        if value.ndim == 1:  # LayerNorm / GroupNorm weight
            return "scale", value
        if value.ndim == 2:  # Linear (out, in) -> (in, out)
            return "kernel", value.T
        if value.ndim == 3:  # Conv1d (out, in, k) -> (k, in, out)
            return "kernel", value.transpose(2, 1, 0)
        if value.ndim == 4:  # Conv2d OIHW -> HWIO
            return "kernel", value.transpose(2, 3, 1, 0)
    raise ValueError(f"no Flax equivalent for leaf {name!r} of shape {value.shape}")


def module_path(torch_key: str) -> tuple[tuple[str, ...], str]:
    """'stages.0.1.fc1.weight' -> (('stages_0_1', 'fc1'), 'weight'): list indices join their parent."""
    parts = torch_key.split(".")
    path = []
    for part in parts[:-1]:
        if part.isdigit() and path:
            path[-1] = f"{path[-1]}_{part}"
        else:
            path.append(part)
    return tuple(path), parts[-1]
