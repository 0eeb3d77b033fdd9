#!/usr/bin/env bash
# The CUDA path on a GPU machine, in a few minutes: the CUDA tests, the benchmark, both default
# trainings (timed) and one short run under torchrun. Prints what the README's section on the CUDA path would quote.
set -euo pipefail
cd "$(dirname "$0")"
out="${1:-output/gpu_check}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -m pytest -q tests/test_cuda.py
python benchmark.py --device cuda --output_dir "$out/bench"
/usr/bin/time -f "train_dvae.py: %e s" python train_dvae.py --device cuda --output_dir "$out/dvae" > "$out/dvae.log"
/usr/bin/time -f "train_mnist.py: %e s" python train_mnist.py --device cuda --output_dir "$out/dall_e" \
    --dvae_checkpoint "$out/dvae/latest.pt" > "$out/dall_e.log"
python generate_mnist.py --device cuda --dall_e_checkpoint "$out/dall_e/latest.pt" --output_dir "$out/samples"
torchrun --standalone --nproc_per_node=1 train_dvae.py --device cuda --num_training_steps 50 --output_dir "$out/torchrun"
python evaluate.py --device cuda --dall_e_checkpoint "$out/dall_e/latest.pt" --output_dir "$out/eval" \
    --judge_dir "$out/judge"
