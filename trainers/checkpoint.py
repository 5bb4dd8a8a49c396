"""Orbax checkpoints of the train state, the input pipeline's position and a task's assets.

Saves are asynchronous and atomic (orbax writes into a temporary directory and renames
it when complete). Kept: the last ``keep`` steps, plus the best one by an eval metric
when ``best_metric`` is set. Restoring takes the target shardings, so a checkpoint
written on one mesh loads onto another. A task's assets (arrays fixed before training
that the params depend on, such as a tokenizer's centroids) are saved in every
checkpoint and come back with it.

Two ways a checkpoint can fail to load are told apart. One whose tree does not fit the
state asked for (another model width, EMA switched on) is a ``CheckpointMismatch``
naming the keys: the checkpoint is fine and nothing is skipped or touched. One that
cannot be read (truncated, half-deleted) is damaged: reading walks back to an older
step, and a resumed training moves the damaged step aside (``Checkpointer.resume``),
so that a corrupt newest checkpoint costs one interval, not the run.
"""

import os
import time
import warnings

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

# Orbax splits the write of a replicated array among its replicas, slicing it on device: a
# program compiled per array shape (a tiny model's first save: 7 s of 8 on CPU). Below
# 1 MiB per replica the split costs more than it saves, so smaller arrays are written whole
# by their first replica; large ones (the weights of a data-parallel model) are still split.
ocp.type_handlers.register_type_handler(
    jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=2**20), override=True
)


class CheckpointMismatch(ValueError):
    """A readable checkpoint whose tree does not fit the state of this config."""


class NoReadableCheckpoint(RuntimeError):
    """Checkpoints exist, but none can be read."""


class _Damaged(Exception):
    pass


def _path_name(path) -> str:
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return "/".join(parts)


def _leaves(tree) -> dict:
    """{'params/stem/kernel': (shape, dtype)} of an abstract state or of checkpoint metadata."""
    return {_path_name(p): (tuple(x.shape), str(x.dtype)) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _listed(names, limit=6):
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def tree_difference(saved: dict, wanted: dict) -> str:
    """What differs between two _leaves() maps, in words ('' where they agree)."""
    missing, extra = set(wanted) - set(saved), set(saved) - set(wanted)
    other = [k for k in set(saved) & set(wanted) if saved[k] != wanted[k]]
    lines = []
    if missing:
        lines.append(f"{len(missing)} not in the checkpoint: {_listed(missing)}")
    if extra:
        lines.append(f"{len(extra)} only in the checkpoint: {_listed(extra)}")
    for k in sorted(other)[:6]:
        (s_shape, s_dtype), (w_shape, w_dtype) = saved[k], wanted[k]
        lines.append(f"{k}: {s_dtype}{list(s_shape)} in the checkpoint, {w_dtype}{list(w_shape)} here")
    if len(other) > 6:
        lines.append(f"and {len(other) - 6} more with other shapes")
    return "; ".join(lines)


def check_writable(directory: str):
    """Fails at once where a save would fail later (and the next one hang in orbax)."""
    directory = os.path.abspath(directory)
    probe = os.path.join(directory, f".write-test-{jax.process_index()}-{os.getpid()}")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise OSError(f"cannot write checkpoints to {directory}: {e.strerror or e}") from None


class Checkpointer:
    def __init__(
        self,
        directory: str,
        keep: int = 3,
        best_metric: str = "",
        best_mode: str = "max",
        async_save=True,
        read_only=False,
    ):
        keep_policy = policies.LatestN(n=keep)
        if best_metric:
            key = f"eval/{best_metric}"
            best = policies.BestN(
                get_metric_fn=lambda m: m[key],
                reverse=best_mode == "min",
                n=1,
                keep_checkpoints_without_metrics=False,
            )
            keep_policy = policies.AnyPreservationPolicy([keep_policy, best])
        self.directory = os.path.abspath(directory)
        # A reader (evaluation beside a running training) must not clean up the writer's
        # temporary directories: that would abandon the save in flight.
        self.manager = ocp.CheckpointManager(
            self.directory,
            item_handlers={
                "state": ocp.PyTreeCheckpointHandler(),  # as the standard handler writes it, and reads parts
                "data": ocp.JsonCheckpointHandler(),
                "assets": ocp.StandardCheckpointHandler(),
            },
            options=ocp.CheckpointManagerOptions(
                preservation_policy=keep_policy,
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=not read_only,
                read_only=read_only,
                create=not read_only,
            ),
        )

    def save(self, step: int, state, data_state: dict, assets=None, metrics=None, force=False):
        self.manager.check_for_errors()  # a failed asynchronous save stops the run here, not in a hang
        items = dict(state=ocp.args.PyTreeSave(state), data=ocp.args.JsonSave(data_state))
        if assets:
            items["assets"] = ocp.args.StandardSave(assets)
        self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)

    def steps(self):
        return sorted(self.manager.all_steps())

    def _read(self, step: int, abstract_state):
        """(step, state, data_state, assets); CheckpointMismatch or _Damaged(reason)."""
        partial = isinstance(abstract_state, dict)  # some of the state's fields, by name
        try:
            metadata = self.manager.item_metadata(step)["state"]
            saved = _leaves(getattr(metadata, "tree", metadata))  # orbax versions differ in the wrapper
        except Exception as e:  # orbax/tensorstore raise many types for a damaged checkpoint
            raise _Damaged(f"its metadata cannot be read ({type(e).__name__}: {e})") from None
        if partial:
            saved = {k: v for k, v in saved.items() if k.split("/")[0] in abstract_state}
        difference = tree_difference(saved, _leaves(abstract_state))
        if difference:
            raise CheckpointMismatch(
                f"checkpoint {self.directory}/{step} does not fit this config's state: {difference}"
            )
        try:
            restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_state)
            items = dict(
                state=ocp.args.PyTreeRestore(abstract_state, restore_args=restore_args, partial_restore=partial),
                data=ocp.args.JsonRestore(),
            )
            if os.path.isdir(os.path.join(self.directory, str(step), "assets")):
                items["assets"] = ocp.args.StandardRestore()
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:
            raise _Damaged(f"{type(e).__name__}: {e}") from None
        return step, restored["state"], restored["data"], restored["assets"] if "assets" in items else None

    def restore(self, abstract_state, step=None):
        """(step, state, data_state, assets) of ``step``, or of the newest readable checkpoint
        (damaged ones are skipped with a warning); None if there is none. Raises
        CheckpointMismatch where a readable checkpoint does not fit ``abstract_state``
        (jax.ShapeDtypeStruct leaves carrying the target shardings; a dict of some of the
        state's fields reads only those). assets: the task's numpy arrays, None where it
        saved none."""
        if step is not None:
            if step not in self.steps():
                raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; there are {self.steps()}")
            try:
                return self._read(step, abstract_state)
            except _Damaged as e:
                raise ValueError(f"checkpoint {self.directory}/{step} cannot be read: {e}") from None
        for s in self.steps()[::-1]:
            try:
                return self._read(s, abstract_state)
            except _Damaged as e:
                warnings.warn(f"skipping unreadable checkpoint {self.directory}/{s}: {e}", stacklevel=2)
        return None

    def resume(self, abstract_state, start_fresh=False):
        """restore() for a training that goes on in this directory: a damaged step newer than
        the one resumed from is moved aside (kept, renamed), so the run can save that step
        again. Where checkpoints exist but none can be read: NoReadableCheckpoint, or with
        ``start_fresh`` all are moved aside and None is returned."""
        damaged, restored = [], None
        for s in self.steps()[::-1]:
            try:
                restored = self._read(s, abstract_state)
                break
            except _Damaged as e:
                damaged.append((s, str(e)))
        if damaged and restored is None and not start_fresh:
            reasons = "; ".join(f"{s}: {reason}" for s, reason in damaged)
            raise NoReadableCheckpoint(
                f"no checkpoint in {self.directory} can be read ({reasons}). Nothing was changed; to move them "
                f"aside to {self.aside_directory()} and train from step 0, pass --start-fresh"
            )
        for s, reason in damaged:
            moved = self._move_aside(s)
            warnings.warn(f"unreadable checkpoint {self.directory}/{s} ({reason}) moved to {moved}", stacklevel=2)
        if damaged:
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices("checkpoints moved aside")
            self.manager.reload()
        return restored

    def aside_directory(self) -> str:
        return self.directory + "-unreadable"

    def _move_aside(self, step: int) -> str:
        target = os.path.join(self.aside_directory(), f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        if jax.process_index() == 0:
            os.makedirs(self.aside_directory(), exist_ok=True)
            os.rename(os.path.join(self.directory, str(step)), target)
        return target

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        """Waits for a save in flight, then closes; its error, if any, is raised here."""
        self.manager.close()

    def close_after_error(self):
        """close() on the way out of a failed run: the save in flight is still completed, but
        an error of its own is only reported, so that it does not hide the run's."""
        try:
            self.manager.close()
        except Exception as e:
            warnings.warn(
                f"the last checkpoint save in {self.directory} failed too: {type(e).__name__}: {e}", stacklevel=2
            )


def restore_run(trainer, workdir: str, step=None):
    """(step, state) of a run's checkpoint in ``workdir`` (the newest readable one unless
    ``step``), for the command-line tools: exits with a message when there is none or it
    does not fit the trainer's config. The optimizer state is not read (``opt_state`` is
    None): inference needs none of it, and AdamW's moments are twice the params' memory.
    The checkpoint's assets go to the trainer's task."""
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    # Checked before orbax is asked: its clean-up thread can race the interpreter's exit.
    if not os.path.isdir(directory):
        raise SystemExit(f"no checkpoint in {directory}")
    ckpt = Checkpointer(directory, async_save=False, read_only=True)
    wanted = {
        name: part
        for name in ("step", "params", "model_state", "ema_params", "rng")
        if (part := getattr(trainer.abstract_state, name)) is not None
    }
    try:
        restored = ckpt.restore(wanted, step)
    except (CheckpointMismatch, FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None
    finally:
        ckpt.close()
    if restored is None:
        raise SystemExit(f"no readable checkpoint in {directory} (steps {ckpt.steps()})")
    step, parts, _, assets = restored
    if assets is not None:
        trainer.task.set_assets(assets)
    return step, trainer.abstract_state.replace(opt_state=None, **parts)


def restore_or_load(trainer, workdir: str | None, step=None, weights: str | None = None):
    """(step, state) for the inference commands, without optimizer state: upstream
    ``weights`` converted by the task (Trainer.load_weights; step 0), or a run's checkpoint
    in ``workdir`` (restore_run)."""
    if weights:
        return 0, trainer.load_weights(trainer.init_inference(trainer.cfg.seed), weights)
    return restore_run(trainer, workdir, step)


def abstract_with_shardings(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
