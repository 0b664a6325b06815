#!/usr/bin/env bash
# The GPU checks of issue 19, as one short script for a machine with a CUDA GPU and ens installed with its
# CUDA extras (pip install -e ".[cuda,dev]" with a CUDA build of torch). Writes everything under OUT:
#   bench_device.json   teacher steps/s and peak memory, tiny and small, CPU and GPU side by side
#   pytest.txt          tests/test_gpu.py (CPU zoo on the GPU, real mamba-ssm kernels vs the exportable scan,
#                       bf16 teacher training) and the device plumbing tests
#   search.txt          a 2-trial search whose trials each get one GPU from Ray
#   zoo_{cpu,cuda}.txt  the tiny zoo built for a fixed number of steps on each device (wall time in the log)
# Usage: bash bench/gpu_checks.sh [OUT]   (default OUT: ./gpu-checks)
set -uo pipefail
out=${1:-${OUT:-gpu-checks}}
mkdir -p "$out"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU here')" || exit 2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1
uptime > "$out/load.txt"
python bench/bench_device.py --devices cpu,cuda --presets tiny,small --steps 30 --warmup 3 \
  > "$out/bench_device.json" 2> "$out/bench_device.log"
python -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_compute.py > "$out/pytest.txt" 2>&1
tmp=$(mktemp -d)
for dev in cpu cuda; do
  ( cd "$tmp" && /usr/bin/time -f "wall %e s" ens zoo build --task denoise --out "zoo-$dev" --device "$dev" \
      --steps 200 --distill-steps 100 --calib-steps 0 --rank-steps 0 --kinds M,E --quality-crop 128 ) \
    > "$out/zoo_$dev.txt" 2>&1
done
( cd "$tmp" && ens search --task denoise --zoo "zoo-cuda" --profiler proxy --trials 2 --workers 1 \
    --gpus-per-trial 1 --device cuda --storage gpu.db \
  && python -c "import optuna; s = optuna.load_study(study_name='denoise-tiny', storage='sqlite:///gpu.db'); \
print([t.user_attrs.get('eval_device') for t in s.trials])" ) > "$out/search.txt" 2>&1
uptime >> "$out/load.txt"
rm -rf "$tmp"
echo "wrote $out/"
