"""The device mesh and the one table that maps logical axis names onto it.

Models name their axes ("embed", "mlp", ...); only this table knows the mesh. Changing
the parallelism is a config change (mesh.data / mesh.fsdp / mesh.tensor), never a
model change.
"""

import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")  # the mesh axes the batch is split over

LOGICAL_RULES = (
    ("batch", BATCH),
    ("embed", "fsdp"),  # parameters' model-width dim: sharded for FSDP (ZeRO-3)
    ("mlp", "tensor"),  # hidden width of MLP / gated blocks: Megatron-style tensor parallel
    ("conv_channels", "tensor"),
    ("heads", "tensor"),
    ("qkv", "tensor"),  # fused q|k|v outputs of a (in, 3 x width) projection
    ("qkv_out", "tensor"),
    ("heads_flat", "tensor"),  # per-channel weights over the attention width (FSMN)
    ("features", None),  # input feature width (e.g. stacked filterbanks)
    ("layers", None),  # the stacking axis of scanned layers
    ("vocab", "tensor"),
    ("classes", "tensor"),
    ("conv_in", None),
    ("act_embed", None),
    ("height", None),
    ("width", None),
    ("length", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one size may be -1 to take the remaining devices.

    Devices keep jax.devices() order (process-major), so each process holds a
    contiguous block of the batch, which is what the input pipeline reads.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if any(s == 0 or s < -1 for s in sizes) or len(devices) % known:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} does not fit {len(devices)} devices")
    sizes = [len(devices) // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices, there are {len(devices)}"
        )
    return Mesh(np.array(devices).reshape(sizes), MESH_AXES)


def first_device():
    """A context with the mesh of this process's first device alone: where helper models (a
    recogniser, a speaker embedder, the CosyVoice chain) hold their params and run, also
    inside a trainer's mesh."""
    return jax.set_mesh(make_mesh(devices=jax.local_devices()[:1]))


def mesh_spec(logical_spec, shape, mesh: Mesh) -> P:
    """Logical PartitionSpec -> mesh PartitionSpec, replicating any dim the mesh axes do not divide."""
    mapped = nn.logical_to_mesh_axes(tuple(logical_spec) if logical_spec is not None else (), LOGICAL_RULES)
    out = []
    for dim, axes in zip(shape, tuple(mapped) + (None,) * (len(shape) - len(mapped))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = math.prod(mesh.shape[a] for a in names)
        out.append(axes if names and dim % size == 0 else None)
    return P(*out)


def unbox_abstract(boxed_abstract):
    """The shapes of a boxed abstract tree, without the sharding constraint flax's unbox
    applies under active axis rules (which fails on abstract values, e.g. when a helper
    run is built inside another trainer's context)."""
    return jax.tree.map(
        lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.meta.AxisMetadata) else x,
        boxed_abstract,
        is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata),
    )


def param_shardings(boxed_abstract_params, mesh: Mesh):
    """NamedShardings for an abstract (boxed, from jax.eval_shape of init) parameter tree."""
    logical = nn.get_partition_spec(boxed_abstract_params)
    shapes = unbox_abstract(boxed_abstract_params)
    return jax.tree.map(
        lambda spec, s: NamedSharding(mesh, mesh_spec(spec, s.shape, mesh)),
        logical,
        shapes,
        is_leaf=lambda x: isinstance(x, P),
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def host_copy(tree):
    """Numpy copies of a tree of global arrays, whole on every process (each may hold only a
    shard, or none, of a multi-process array; jax.device_get fails there)."""
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH, *([None] * (ndim - 1))))


def batch_divisor(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def local_batch_rows(mesh: Mesh, global_batch: int):
    """(start, stop): the contiguous block of a global batch this process's devices hold."""
    index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
    blocks = sorted(
        {(idx[0].start or 0, global_batch if idx[0].stop is None else idx[0].stop) for idx in index_map.values()}
    )
    for (_, stop), (start, _) in zip(blocks, blocks[1:]):
        if stop != start:
            raise ValueError(f"this process's devices hold rows {blocks} of the batch, not one contiguous block")
    return blocks[0][0], blocks[-1][1]


def to_global(mesh: Mesh, local_batch: dict, global_batch: int | None = None) -> dict:
    """Assembles the global batch from each process's rows (global_batch: inferred from their
    number, as every process holds the same share of each batch)."""
    if global_batch is None:
        start, stop = local_batch_rows(mesh, batch_divisor(mesh))
        global_batch = len(next(iter(local_batch.values()))) * batch_divisor(mesh) // (stop - start)
    return {
        k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v, (global_batch,) + v.shape[1:])
        for k, v in local_batch.items()
    }
