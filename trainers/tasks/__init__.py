"""Task modules: how a model family is initialised, trained and evaluated.

A task is a class with:
  model                         the flax module (compute dtype and remat from config)
  train_source(), eval_source() random-access sources (len, getitem) of records
                                (SplitSources provides them from a make_source(split))
  train_transform, eval_transform   per-record host transforms (record, np Generator) -> record
  init(rng, batch)              boxed variables (nn.with_logical_partitioning metadata kept)
  loss(params, batch, rng)      (scalar loss, dict of scalar metrics); batch rows with mask 0 are padding
  eval_outputs(params, batch)   dict of per-example arrays
  eval_metrics(outputs)         host-side: outputs over the whole split (numpy) -> dict of scalars
  write_artifacts(workdir, outputs, step)   pictures or files for a person to look at
and, for generative tasks,
  generate(params, mesh)        (metrics, outputs) of samples drawn at eval time
and, for tasks that train parts in turn (a GAN), instead of loss:
  optimizer_groups              names of the top-level params subtrees with an optimizer state each
  train_update(tx, params, opt_state, batch, rng, step)   (params, opt_state, dict of scalar metrics)
and, for tasks with arrays fixed before training that the params depend on (a tokenizer's centroids),
  assets()                      a dict of numpy arrays saved in every checkpoint, or None
  set_assets(assets)            takes them back from a checkpoint, before any source is made
"""

import importlib

from trainers.config import ConfigError

TASKS = {
    "classification": "trainers.tasks.classification:ClassificationTask",
    "codec": "trainers.tasks.codec:CodecTask",
    "ctc": "trainers.tasks.ctc:CTCTask",
    "diffusion": "trainers.tasks.diffusion:DiffusionTask",
    "tts": "trainers.tasks.tts:TTSTask",
}


class SplitSources:
    """A task's train_source() and eval_source(): each split built once, by the task's make_source(split)."""

    def _source(self, split):
        sources = self.__dict__.setdefault("_sources", {})
        if split not in sources:
            sources[split] = self.make_source(split)
        return sources[split]

    def train_source(self):
        return self._source(self.cfg.data.train_split)

    def eval_source(self):
        return self._source(self.cfg.data.eval_split)


def get_task(cfg):
    if cfg.task not in TASKS:
        raise ConfigError(f"unknown task {cfg.task!r}; valid: {', '.join(TASKS)}")
    module, cls = TASKS[cfg.task].split(":")
    return getattr(importlib.import_module(module), cls)(cfg)
