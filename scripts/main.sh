#!/usr/bin/env bash
# The main job: set up .venv if needed, train a tiny MDLM (masked diffusion LM) on the embedded corpus, export its EMA
# weights, verify the export, print the NELBO perplexity bound, BLiMP accuracy by ELBO and a few samples. Extra
# arguments are passed to the training script (e.g. --max_steps 50).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_env.sh"
cd "$root"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# accelerate gives a single GPU-less process one thread unless told otherwise; the tiny model uses up to 8.
threads=$(( $(nproc) < 8 ? $(nproc) : 8 ))
exec "$root/.venv/bin/accelerate" launch --num_processes 1 --num_machines 1 --mixed_precision no \
    --dynamo_backend no --num_cpu_threads_per_process "$threads" \
    trainers/run_mdlm.py trainers/configs/mdlm_tiny.yaml "$@"
