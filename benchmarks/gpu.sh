#!/usr/bin/env bash
# The accelerator rows of BENCHMARKS.md in one run, each against its PyTorch reference:
#     bash benchmarks/gpu.sh REFS
# REFS holds facebookresearch/DiT (models.py, diffusion/) and yuweihao/MambaOut
# (models/mambaout.py). Sizes are the paper recipes' per-GPU batches.
set -uo pipefail  # one failing benchmark does not stop the others
refs=${1:?usage: bash benchmarks/gpu.sh REFS (a folder with DiT/ and MambaOut/)}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.6
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), '- torch', torch.__version__)"
python3 benchmarks/ctc_loss.py --iters 10 --unroll 1,4,64
python3 benchmarks/speechlm_decode.py --layers 12 --width 1024 --heads 16 --batch 16 --dtype bfloat16 --torch --profile
python3 benchmarks/mambaout_train_step.py --reference "$refs/MambaOut/models/mambaout.py" --batch 128 --iters 5 \
    --dtype bfloat16 --profile
python3 benchmarks/dit_train_step.py --reference "$refs/DiT" --batch 32 --iters 5 --sample_steps 25 --dtype bfloat16 \
    --attention xla,auto --profile
