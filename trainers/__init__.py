"""The one training loop and everything around it; families plug in as task modules.

By role:
- commands (``python -m trainers.<name>``): train, evaluate, sample, extract, export, fid,
  transcribe, compress, tts, speaker, continue_speech;
- the trainer: loop, config, sharding, optim, checkpoint, rundir, runs (trained runs as
  helpers), metrics, tensorboard, progress, pictures, files (atomic writes), cli (errors);
- data/: the input pipelines (grain) and their sources: images, speech, the semantic
  tokenizer, extracted units;
- tasks/: one module (or folder) per family, the contract in tasks/__init__.py;
- evaluators/: metrics a config lists under ``evals:``.
"""
