#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one command (for the device tool's one call; about 5-8 minutes on one GPU):
#   1. the CUDA tests (AMP bf16/fp16 steps, channels_last, kornia on the device, deterministic exact resume,
#      NCCL where two GPUs exist);
#   2. benchmarks/gpu_run.py: BYOL and BYOL + rotation on real CIFAR-10 with the tensor loader: images/s and
#      host syncs per step;
#   3. benchmarks/bench_step.py on the GPU (bf16): auxssl's BYOL step vs lightly's (if installed) and rotation's cost.
# Figures go to $OUT (or ./gpu_check) as JSON; the last line printed is one JSON object with all of them.
#
#   benchmarks/gpu_check.sh            # from the repository root, in an environment with auxssl installed
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_check}
mkdir -p "$out"
if [ ! -f ../shared/data/cifar10-jpg.tar.gz ] && [ -f shared/data/cifar10-jpg.tar.gz ]; then
  export AUXSSL_CIFAR10_JPG=$PWD/shared/data/cifar10-jpg.tar.gz   # the device machine carries shared/ inside
fi
nvidia-smi -L || { echo "gpu_check: no GPU visible" >&2; exit 2; }
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

AUXSSL_TEST_CUDA=1 timeout 300 python -m pytest -m cuda -q -p no:cacheprovider tests/cuda > "$out/cuda_tests.txt" 2>&1
tests_status=$?
tail -3 "$out/cuda_tests.txt"
timeout 240 python benchmarks/gpu_run.py --device cuda > "$out/gpu_run.txt" 2>&1
tail -1 "$out/gpu_run.txt" > "$out/gpu_run.json"
timeout 180 python benchmarks/bench_step.py --device cuda --precision bf16 --batch-size 256 --rounds 3 --steps 10 \
  --configs byol byol_rotation byol_rotation16 > "$out/bench_step.txt" 2>&1
tail -1 "$out/bench_step.txt" > "$out/bench_step.json"
python - "$out" "$tests_status" <<'PY'
import json, sys
from pathlib import Path
out, status = Path(sys.argv[1]), int(sys.argv[2])
summary = {"cuda_tests_exit": status, "cuda_tests": (out / "cuda_tests.txt").read_text().strip().splitlines()[-1:]}
for name in ("gpu_run", "bench_step"):
    try:
        summary[name] = json.loads((out / f"{name}.json").read_text())
    except (json.JSONDecodeError, FileNotFoundError):
        summary[name] = "failed: see " + str(out / f"{name}.txt")
print(json.dumps(summary))
PY
