"""Orbax checkpoints of the train state, the input pipeline's position and a task's assets.

Saves are asynchronous and atomic (orbax writes into a temporary directory and renames
it when complete). Kept: the last ``keep`` steps, plus the best one by an eval metric
when ``best_metric`` is set. Restoring walks back from the newest step and skips any
that fails to read, with a warning, so a corrupt latest checkpoint costs one interval,
not the run. Restoring takes the target shardings, so a checkpoint written on one mesh
loads onto another. A task's assets (arrays fixed before training that the params depend
on, such as a tokenizer's centroids) are saved in every checkpoint and come back with it.
"""
import os
import warnings

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies



class Checkpointer:
    def __init__(self, directory: str, keep: int = 3, best_metric: str = "", best_mode: str = "max", async_save=True):
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
        self.manager = ocp.CheckpointManager(
            self.directory,
            item_names=("state", "data", "assets"),
            options=ocp.CheckpointManagerOptions(
                preservation_policy=keep_policy,
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
            ),
        )

    def save(self, step: int, state, data_state: dict, assets=None, metrics=None, force=False):
        items = dict(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state))
        if assets:
            items["assets"] = ocp.args.StandardSave(assets)
        self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)

    def steps(self):
        return sorted(self.manager.all_steps())

    def restore(self, abstract_state, step=None):
        """(step, state, data_state, assets) of ``step``, or of the newest readable checkpoint; None
        if none. assets: the task's numpy arrays, None where it saved none.

        ``abstract_state``: jax.ShapeDtypeStruct leaves carrying the target shardings.
        """
        steps = [step] if step is not None else self.steps()[::-1]
        if step is not None and step not in self.steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; there are {self.steps()}")
        for s in steps:
            try:
                items = dict(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
                if os.path.isdir(os.path.join(self.directory, str(s), "assets")):
                    items["assets"] = ocp.args.StandardRestore()
                restored = self.manager.restore(s, args=ocp.args.Composite(**items))
                return s, restored["state"], restored["data"], restored["assets"] if "assets" in items else None
            except Exception as e:  # orbax/tensorstore raise many types for a damaged checkpoint
                if step is not None:
                    raise ValueError(f"checkpoint {self.directory}/{s} cannot be restored: {e}") from e
                warnings.warn(f"skipping unreadable checkpoint {self.directory}/{s}: {type(e).__name__}: {e}")
        return None

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()


def restore_run(trainer, workdir: str, step=None):
    """(step, state) of a run's checkpoint in ``workdir`` (the newest readable one unless
    ``step``), for the command-line tools: exits with a message when there is none. The
    checkpoint's assets go to the trainer's task."""
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    # Checked before orbax is asked: its manager would create the directory, and its
    # clean-up thread can race the interpreter's exit.
    restored = None
    if os.path.isdir(directory):
        ckpt = Checkpointer(directory, async_save=False)
        restored = ckpt.restore(trainer.abstract_state, step)
        ckpt.close()
    if restored is None:
        raise SystemExit(f"no checkpoint in {directory}")
    step, state, _, assets = restored
    if assets is not None:
        trainer.task.set_assets(assets)
    return step, state


def abstract_with_shardings(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
