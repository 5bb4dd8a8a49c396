"""The training loop: one for every family; the task module says what is family-specific."""

import collections
import contextlib
import functools
import os
import signal
import sys
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from jaxmodels.nn.state_dict import lazy_layers
from trainers import config as config_lib
from trainers import data, evaluators, rundir, sharding
from trainers.checkpoint import Checkpointer, CheckpointMismatch, abstract_with_shardings, check_writable
from trainers.cli import InputError, read_weights
from trainers.metrics import MetricsWriter
from trainers.optim import make_optimizer
from trainers.progress import progress
from trainers.tasks import (
    BatchesByLength,
    Generates,
    HasAssets,
    HasState,
    LoadsWeights,
    PartsInTurn,
    StatefulLoss,
    get_task,
)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    model_state: Any  # non-trainable state (HasState; {} without): never seen by the optimizer
    opt_state: Any
    ema_params: Any  # None without EMA: the params' EMA, and of the model state's parts in the task's ema_state
    rng: jax.Array  # base key; step s draws from fold_in(rng, s), so resuming needs nothing else

    @property
    def inference_params(self):
        """The variables one samples from or deploys: the params (the EMA params when there
        are any) with the model state."""
        return with_state(self.ema_params if self.ema_params is not None else self.params, self.model_state)


def with_state(params, model_state):
    """Params and model state as one tree, as a task's evaluation and inference take them
    (an averaged state part in EMA params wins over the state's own)."""
    return {**model_state, **params} if model_state else params


class Trainer:
    """Builds the mesh, the sharded state and the jitted steps for one config."""

    def __init__(self, cfg: config_lib.Config, devices=None):
        try:
            self._build(cfg, devices)
        except InputError:
            raise
        except ValueError as e:  # a model name or argument, a mesh, a batch size the config got wrong
            raise config_lib.ConfigError(str(e)) from e

    def _build(self, cfg, devices):
        self.cfg = cfg
        self.task = get_task(cfg)
        self._evaluators = None
        self.mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices)
        self._check_batch_sizes()
        self.tx, self.lr_fn = make_optimizer(cfg.optimizer, cfg.train.steps)

        example = self.task.example_batch(sharding.batch_divisor(self.mesh))
        self.batch_shardings = {k: sharding.batch_sharding(self.mesh, v.ndim) for k, v in example.items()}
        with self.context():
            variables = jax.eval_shape(self.task.init, jax.random.PRNGKey(0), example)
        boxed, boxed_state = variables["params"], variables.get("state", {})
        self.param_shardings = sharding.param_shardings(boxed, self.mesh)
        self.model_state_shardings = sharding.param_shardings(boxed_state, self.mesh)
        if boxed_state and not isinstance(self.task, PartsInTurn | StatefulLoss):
            raise ValueError(
                f"task {cfg.task}: model state is updated by a train_update (PartsInTurn) or a "
                "loss_and_state (StatefulLoss); it has neither"
            )
        self.ema_state = self.task.ema_state if isinstance(self.task, HasState) else ()
        rep = sharding.replicated(self.mesh)
        # A task with optimizer_groups (a GAN: generator, discriminator) keeps one optimizer
        # state per named top-level subtree of its params and updates them in its own
        # train_update, with its model state.
        self.groups = self.task.optimizer_groups if isinstance(self.task, PartsInTurn) else None
        if self.groups and cfg.optimizer.grad_accum_steps > 1:
            raise ValueError(f"task {cfg.task} updates its parts in turn: optimizer.grad_accum_steps must be 1")
        opt_shape = jax.eval_shape(self._init_optimizer, sharding.unbox_abstract(boxed))

        def opt_shardings_of(shape, param_shardings):
            return optax.tree_map_params(
                self.tx, lambda _, s: s, shape, param_shardings, transform_non_params=lambda _: rep
            )

        if self.groups:
            opt_shardings = {g: opt_shardings_of(opt_shape[g], self.param_shardings[g]) for g in self.groups}
        else:
            opt_shardings = opt_shardings_of(opt_shape, self.param_shardings)
        ema = None
        if cfg.optimizer.ema_decay > 0:
            ema = self._averaged(self.param_shardings, self.model_state_shardings)
        self.state_shardings = TrainState(
            rep, self.param_shardings, self.model_state_shardings, opt_shardings, ema, rep
        )

        def init_variables(rng):
            k_init, k_train = jax.random.split(rng)
            variables = nn.meta.unbox(self.task.init(k_init, example))
            return variables["params"], variables.get("state", {}), k_train

        def init_state(rng):
            params, model_state, k_train = init_variables(rng)
            ema_params = self._averaged(params, model_state) if cfg.optimizer.ema_decay > 0 else None
            opt_state = self._init_optimizer(params)
            return TrainState(jnp.zeros((), jnp.int32), params, model_state, opt_state, ema_params, k_train)

        self._init = jax.jit(init_state, out_shardings=self.state_shardings)
        self._init_variables = jax.jit(
            init_variables, out_shardings=(self.param_shardings, self.model_state_shardings, rep)
        )
        self.abstract_state = abstract_with_shardings(
            jax.eval_shape(init_state, jax.random.PRNGKey(0)), self.state_shardings
        )
        self.train_step = jax.jit(
            self._train_step,
            in_shardings=(self.state_shardings, self.batch_shardings),
            out_shardings=(self.state_shardings, rep),
            donate_argnums=(0,),
        )
        self._eval_step = jax.jit(
            self._eval_outputs,
            in_shardings=(with_state(self.param_shardings, self.model_state_shardings), self.batch_shardings),
        )

    def context(self):
        """Mesh and logical-axis rules, active while tracing so activation constraints bind."""
        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(nn.logical_axis_rules(sharding.LOGICAL_RULES))
        return stack

    def _check_batch_sizes(self):
        d, o = self.cfg.data, self.cfg.optimizer
        div = sharding.batch_divisor(self.mesh)
        if d.batch_size % (div * o.grad_accum_steps):
            raise ValueError(
                f"data.batch_size={d.batch_size} must divide by data x fsdp = {div} devices"
                f" times optimizer.grad_accum_steps={o.grad_accum_steps}"
            )
        if d.eval_batch_size % div:
            raise ValueError(f"data.eval_batch_size={d.eval_batch_size} must divide by data x fsdp = {div}")

    def _averaged(self, params, model_state):
        """What the EMA averages: the params and the model state's parts in the task's ema_state."""
        return {**params, **{k: model_state[k] for k in self.ema_state}}

    def _init_optimizer(self, params):
        if self.groups:
            return {g: self.tx.init(params[g]) for g in self.groups}
        return self.tx.init(params)

    def init(self, seed: int):
        with self.context():
            return self._init(jax.random.PRNGKey(seed))

    def init_inference(self, seed: int) -> TrainState:
        """The state as init(seed) makes it without optimizer state or EMA (both None): what
        the inference commands load upstream weights into, in a third of AdamW's memory."""
        with self.context():
            params, model_state, rng = self._init_variables(jax.random.PRNGKey(seed))
        return TrainState(jnp.zeros((), jnp.int32), params, model_state, None, None, rng)

    def load_weights(self, state: TrainState, path: str) -> TrainState:
        """``state`` with the parts an upstream checkpoint holds, converted by the task
        (LoadsWeights) and placed on their shardings, each device receiving only its slice;
        the optimizer state and EMA start afresh from them (a state without optimizer state,
        init_inference's, gets neither). Other parts keep their values."""
        if not isinstance(self.task, LoadsWeights):
            raise config_lib.ConfigError(
                f"model.init_from: task {self.cfg.task} has no converter for upstream weights"
            )
        state_dict = read_weights(path)  # memory-mapped: each device's slices are read when placed
        try:
            with lazy_layers():  # scanned layers too
                variables = self.task.convert_weights(state_dict)
            params = _overlay(state.params, variables.get("params", {}), self.param_shardings)
            model_state = _overlay(state.model_state, variables.get("state", {}), self.model_state_shardings)
        except ValueError as e:
            raise InputError(f"the weights {path}, model {self.cfg.model.name}: {e}") from None
        kept = sorted(set(state.params) - set(variables.get("params", {})))  # top-level parts
        kept = f" (kept as initialised: {', '.join(kept)})" if kept else ""
        print(f"initialised from {path}{kept}", file=sys.stderr)  # stdout is the inference commands' output
        if state.opt_state is None:
            return state.replace(params=params, model_state=model_state)

        def fresh(params, model_state):
            ema = self._averaged(params, model_state) if state.ema_params is not None else None
            return self._init_optimizer(params), jax.tree.map(jnp.copy, ema)

        s = self.state_shardings
        with self.context():
            opt_state, ema = jax.jit(fresh, out_shardings=(s.opt_state, s.ema_params))(params, model_state)
        return state.replace(params=params, model_state=model_state, opt_state=opt_state, ema_params=ema)

    def _train_step(self, state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        if self.groups:
            params, opt_state, model_state, metrics = self.task.train_update(
                self.tx, state.params, state.opt_state, state.model_state, batch, rng, state.step
            )
        else:
            params, opt_state, model_state, metrics = self._gradient_update(state, batch, rng)
        ema_params = state.ema_params
        if ema_params is not None:
            decay = self.cfg.optimizer.ema_decay
            # Flags and counters (a codebook's "inited") are not averaged: they take the new value.
            ema_params = jax.tree.map(
                lambda e, p: decay * e + (1.0 - decay) * p if jnp.issubdtype(e.dtype, jnp.floating) else p,
                ema_params,
                self._averaged(params, model_state),
            )
        # A step whose loss or gradient norm is not finite is not applied: the state (and
        # so every checkpoint) never holds NaN; the loop stops or skips on train/nonfinite.
        finite = jnp.all(
            jnp.stack([jnp.isfinite(v) for k, v in metrics.items() if k == "train/loss" or k.endswith("grad_norm")])
        )
        params, model_state, opt_state, ema_params = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old),
            (params, model_state, opt_state, ema_params),
            (state.params, state.model_state, state.opt_state, state.ema_params),
        )
        metrics["train/lr"] = self.lr_fn(state.step)
        metrics["train/nonfinite"] = 1.0 - finite.astype(jnp.float32)
        new = state.replace(
            step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state, ema_params=ema_params
        )
        return new, metrics

    def _gradient_update(self, state: TrainState, batch, rng):
        """One optimizer step on the gradient of task.loss (averaged over micro-batches); the
        model state a StatefulLoss moves, passed from micro-batch to micro-batch."""
        if isinstance(self.task, StatefulLoss):
            grad_fn = jax.value_and_grad(self.task.loss_and_state, has_aux=True)
        else:
            stateless = jax.value_and_grad(self.task.loss, has_aux=True)

            def grad_fn(params, model_state, mb, rng, step):
                (loss, aux), grads = stateless(params, mb, rng, step)
                return (loss, (aux, model_state)), grads

        accum = self.cfg.optimizer.grad_accum_steps
        if accum == 1:
            (loss, (aux, model_state)), grads = grad_fn(state.params, state.model_state, batch, rng, state.step)
        else:
            # Micro-batch k takes rows k, k+accum, ...: each stays spread over all devices.
            micro = jax.tree.map(
                lambda x: nn.with_logical_constraint(
                    x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1),
                    (None, "batch") + (None,) * (x.ndim - 1),
                ),
                batch,
            )
            first = jax.tree.map(lambda x: x[0], micro)
            rest = jax.tree.map(lambda x: x[1:], micro)

            def body(carry, inputs):
                (loss, (aux, model_state)), grads = carry
                i, mb = inputs
                (l_i, (a_i, model_state)), g_i = grad_fn(
                    state.params, model_state, mb, jax.random.fold_in(rng, i), state.step
                )
                total = jax.tree.map(jnp.add, (loss, aux, grads), (l_i, a_i, g_i))
                return ((total[0], (total[1], model_state)), total[2]), None

            start = grad_fn(state.params, state.model_state, first, rng, state.step)
            ((loss, (aux, model_state)), grads), _ = jax.lax.scan(body, start, (jnp.arange(1, accum), rest))
            loss, aux, grads = jax.tree.map(lambda x: x / accum, (loss, aux, grads))
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"train/loss": loss, "train/grad_norm": optax.tree.norm(grads), **aux}
        return params, opt_state, model_state, metrics

    def _eval_outputs(self, params, batch):
        return {**self.task.eval_outputs(params, batch), "_mask": batch["mask"]}

    def evaluators(self) -> list:
        """The config's evals (plug-ins), built on first use: their helper runs are loaded then."""
        if self._evaluators is None:
            self._evaluators = evaluators.build(self.cfg, self.task)
        return self._evaluators

    def evaluate(self, params, step=None):
        """Metrics over the whole eval split, sharded over all devices and processes, then
        those of the task's samples (Generates) and of the evals due at ``step`` (all when None).
        ``params`` hold the model state too (with_state), where the task has one.

        Per-example outputs are gathered in split order and the padding rows dropped, so
        the result equals single-device evaluation.
        """
        d = self.cfg.data
        source = self.task.eval_source()
        rows = sharding.local_batch_rows(self.mesh, d.eval_batch_size)
        collected = collections.defaultdict(list)
        with self.context():
            batches = data.eval_batches(source, self.task.eval_transform, d.eval_batch_size, rows, d.num_workers)
            for local in progress(batches, -(-len(source) // d.eval_batch_size), "evaluation batches"):
                out = self._eval_step(params, sharding.to_global(self.mesh, local, d.eval_batch_size))
                out = multihost_utils.process_allgather(out, tiled=True)
                keep = out.pop("_mask") > 0
                for k, v in out.items():
                    collected[k].append(np.asarray(v)[keep])
        outputs = {k: np.concatenate(v) for k, v in collected.items()}
        metrics = self.task.eval_metrics(outputs)
        if isinstance(self.task, Generates):
            with self.context():
                generated_metrics, generated = self.task.generate(params, self.mesh)
            metrics.update(generated_metrics)
            outputs.update(generated)
        for c, evaluator in self.evaluators():
            if step is None or evaluators.due(c, step, step == self.cfg.train.steps):
                more_metrics, more_outputs = evaluator(outputs, params)
                metrics.update(more_metrics)
                outputs.update(more_outputs)
        return metrics, outputs

    def evaluate_state(self, state: TrainState, step=None):
        """Metrics of the params and, with EMA on, of the EMA params as ``ema_<name>``.

        The outputs (what the pictures show) are the EMA params' when there are any:
        those are the weights one samples from or deploys.
        """
        metrics, outputs = self.evaluate(with_state(state.params, state.model_state), step)
        if state.ema_params is not None:
            ema_metrics, outputs = self.evaluate(state.inference_params, step)
            metrics.update({f"ema_{k}": v for k, v in ema_metrics.items()})
        return metrics, outputs


class _Preemption:
    """While active, turns SIGTERM/SIGINT into a stop at a step all processes agree on.

    The processes of one job may get the signal at different steps. Each step they take
    the max of their signal numbers on the devices (one tiny collective) and read the
    result one step later, so the host never waits for the step in flight.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, mesh):
        self.mesh = mesh
        self.local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
        self.sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names))
        self.reduce = jax.jit(jnp.max, out_shardings=sharding.replicated(mesh))
        self.received, self.pending = 0, None

    def __enter__(self):
        self.previous = [signal.signal(s, self._handle) for s in self.SIGNALS]
        return self

    def __exit__(self, *exc):
        for s, handler in zip(self.SIGNALS, self.previous):
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        self.received = signum

    def agreed_signal(self) -> int:
        """The signal to stop for (0: go on), the same on every process at the same step."""
        if jax.process_count() == 1:
            return self.received
        local = np.full((self.local_devices,), self.received, np.int32)
        flags = jax.make_array_from_process_local_data(self.sharding, local, (self.mesh.size,))
        previous, self.pending = self.pending, self.reduce(flags)
        return 0 if previous is None else int(previous)


class NonFiniteLoss(FloatingPointError):
    pass


def _overlay(current, loaded, shardings):
    """``current`` with the leaves of ``loaded`` (numpy, the same paths and shapes) put on
    their shardings: each device is given only its slice of each array."""
    flat, new = flax.traverse_util.flatten_dict(current), flax.traverse_util.flatten_dict(loaded)
    placement = flax.traverse_util.flatten_dict(shardings)
    unknown = ["/".join(k) for k in new if k not in flat]
    wrong = [
        f"{'/'.join(k)}: checkpoint {tuple(v.shape)} vs model {flat[k].shape}"
        for k, v in new.items()
        if k in flat and tuple(v.shape) != flat[k].shape
    ]
    problems = ([f"not in the model: {', '.join(unknown)}"] if unknown else []) + wrong
    if problems:
        raise ValueError("; ".join(problems))
    for k, value in new.items():
        dtype = flat[k].dtype
        flat[k] = jax.make_array_from_callback(
            flat[k].shape, placement[k], lambda index, v=value, dtype=dtype: np.asarray(v[index], dtype)
        )
    return flax.traverse_util.unflatten_dict(flat)


def _check_finite(step: int, metrics: dict, on_nonfinite: str):
    """Stops the run (or, with train.on_nonfinite=skip, says so) after a step that was not applied."""
    if not float(metrics["train/nonfinite"]):
        return
    values = ", ".join(
        f"{k}={float(v):.4g}" for k, v in metrics.items() if k == "train/loss" or k.endswith("grad_norm")
    )
    message = f"step {step}: the loss or a gradient norm is not finite ({values}); the update was not applied"
    if on_nonfinite == "error":
        raise NonFiniteLoss(
            f"{message}. The run stops here with its checkpoints intact (train.on_nonfinite=skip "
            "would skip such steps)"
        )
    print(f"warning: {message}: step skipped", flush=True)


def train(cfg: config_lib.Config, workdir: str, allow_config_change=False, start_fresh=False) -> dict:
    """Trains to cfg.train.steps, resuming from the newest readable checkpoint in workdir.

    A workdir holds one run: a second trainer on it is an error, and so is resuming with
    another config (unless ``allow_config_change``; the old config is kept beside the new)
    or with checkpoints that do not fit the config's state. Nothing is deleted or
    overwritten before those checks pass. Damaged checkpoints are moved aside; with none
    readable the run stops unless ``start_fresh``.
    """
    os.makedirs(workdir, exist_ok=True)
    lock = rundir.WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock:
        return _train(cfg, workdir, allow_config_change, start_fresh)


def _train(cfg, workdir, allow_config_change, start_fresh):
    changes = rundir.check_config(workdir, cfg, allow_config_change)
    directory, t = os.path.join(workdir, "checkpoints"), cfg.train
    check_writable(directory)
    trainer = Trainer(cfg)
    ckpt = Checkpointer(directory, t.keep_checkpoints, t.best_metric, t.best_mode, t.async_checkpointing)
    try:
        try:
            restored = ckpt.resume(trainer.abstract_state, start_fresh)
        except CheckpointMismatch as e:
            raise CheckpointMismatch(f"{e}. Config changes: {'; '.join(changes) or 'none'}") from None
        if jax.process_index() == 0:
            keep = f"config.step{restored[0]}.yaml" if changes and restored is not None else ""
            rundir.write_config(workdir, cfg, keep_previous_as=keep)
        result = _loop(trainer, ckpt, restored, workdir)
    except BaseException:
        ckpt.close_after_error()
        raise
    ckpt.close()
    return result


def _train_iterator(trainer):
    """This process's rows of each training batch: data.batch_size rows, or batches by length
    where the task forms them so."""
    cfg, d = trainer.cfg, trainer.cfg.data
    source, transform = trainer.task.train_source(), trainer.task.train_transform
    buckets = trainer.task.length_buckets() if isinstance(trainer.task, BatchesByLength) else None
    if buckets is None:
        rows = sharding.local_batch_rows(trainer.mesh, d.batch_size)
        return data.train_iterator(source, transform, d.batch_size, rows, cfg.seed, d.num_workers)
    multiple = sharding.batch_divisor(trainer.mesh) * cfg.optimizer.grad_accum_steps
    sizes = buckets.batch_sizes(multiple)
    print(
        "batches by length: " + ", ".join(f"{n} x {b:g}" for n, b in zip(sizes, buckets.bounds)),
        file=sys.stderr,
        flush=True,
    )
    rows_of = functools.partial(sharding.local_batch_rows, trainer.mesh)
    return data.bucketed_train_iterator(source, transform, buckets, multiple, rows_of, cfg.seed, d.num_workers)


def _loop(trainer, ckpt, restored, workdir):
    cfg = trainer.cfg
    t = cfg.train
    if restored is not None and restored[3] is not None:
        trainer.task.set_assets(restored[3])  # before the sources, which may be made with them
    iterator = _train_iterator(trainer)
    trainer.task.eval_source()  # built (and its files checked) now, not at the first evaluation
    trainer.evaluators()  # and their helper runs loaded
    assets = trainer.task.assets() if isinstance(trainer.task, HasAssets) else None
    if restored is None:
        state = trainer.init(cfg.seed)
        if cfg.model.init_from:
            state = trainer.load_weights(state, cfg.model.init_from)
    else:
        step, state, data_state, _ = restored
        iterator.set_state(data_state)
        print(f"resumed from {ckpt.directory}/{step}", flush=True)
    step = int(state.step)
    writer = MetricsWriter(workdir, t.steps, step)
    eval_metrics = writer.last_eval() if step >= t.steps else {}
    last_log, last_log_step, examples = time.time(), step, 0
    stop_signal = 0
    previous = None  # the last step's (number, metrics): read once the next step is queued
    with writer, trainer.context(), _Preemption(trainer.mesh) as preempt:
        while step < t.steps:
            batch = sharding.to_global(trainer.mesh, next(iterator))
            examples += len(batch["mask"])
            state, metrics = trainer.train_step(state, batch)
            if previous is not None:
                _check_finite(*previous, t.on_nonfinite)
            step += 1
            previous = (step, metrics)
            writer.advance()
            final = step == t.steps
            if step % t.log_every == 0 or final:
                metrics = jax.device_get(metrics)
                elapsed = time.time() - last_log
                metrics["train/step_time"] = elapsed / (step - last_log_step)
                metrics["train/examples_per_sec"] = examples / elapsed
                writer.write(step, metrics)
                last_log, last_log_step, examples = time.time(), step, 0
            save_metrics = None
            if step % t.eval_every == 0 or final:
                _check_finite(*previous, t.on_nonfinite)
                previous = None  # checked: not again at the next step
                metrics, outputs = trainer.evaluate_state(state, step)
                eval_metrics = save_metrics = {f"eval/{k}": v for k, v in metrics.items()}
                writer.write(step, eval_metrics)
                if jax.process_index() == 0:
                    trainer.task.write_artifacts(workdir, outputs, step)
            stop_signal = preempt.agreed_signal()
            if step % t.checkpoint_every == 0 or save_metrics or final or stop_signal:
                ckpt.save(
                    step, state, iterator.get_state(), assets, metrics=save_metrics, force=final or bool(stop_signal)
                )
            if stop_signal:
                print(f"signal {stop_signal}: checkpoint written at step {step}, stopping", flush=True)
                break
        if previous is not None:
            _check_finite(*previous, t.on_nonfinite)
    ckpt.wait()
    if stop_signal:
        raise SystemExit(128 + stop_signal)
    return eval_metrics
