#!/usr/bin/env bash
# The CPU convergence study on real CIFAR-10 (see experiments/results/cifar10-cpu/README.md):
#
#   experiments/run_cifar10_cpu_study.sh             # every arm, then the report into experiments/results/
#   ARMS="byol byol_rotation" SEEDS="0 1" experiments/run_cifar10_cpu_study.sh
#
# Arms (all on experiments/configs/study_cifar10_cpu.yaml, only these settings differ):
#   byol                BYOL
#   byol_rotation       BYOL + rotation prediction (defaults: lambda 0.1, full resolution)
#   byol_rotation16     BYOL + rotation prediction on 16 px copies of the views (the cheap variant)
#   rotation_only       rotation prediction alone (no base loss; lambda 1)
#   simclr              SimCLR
#   simclr_rotation     SimCLR + rotation prediction
# Knobs: ARMS, SEEDS (default "0 1" for the BYOL pair, "0" for the others), OUT (runs), RESULTS, EXTRA (--set ...).
# Interrupted runs resume from their last checkpoint; finished runs are not retrained (auxssl prints their results) and
# a run whose settings differ from the ones asked for is refused, never relabelled.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=experiments/configs/study_cifar10_cpu.yaml
ARMS=${ARMS:-"byol byol_rotation byol_rotation16 rotation_only simclr simclr_rotation"}
OUT=${OUT:-runs/cifar10-cpu-study}
RESULTS=${RESULTS:-experiments/results/cifar10-cpu}

arm_sets() {  # one override per line
  case "$1" in
    byol) printf '%s\n' "model.method=byol" "tasks=[]" ;;
    byol_rotation) printf '%s\n' "model.method=byol" "tasks=[{name: rotation}]" ;;
    byol_rotation16) printf '%s\n' "model.method=byol" "tasks=[{name: rotation, args: {size: 16}}]" ;;
    rotation_only) printf '%s\n' "model.method=none" "tasks=[{name: rotation, weight: 1.0}]" ;;
    simclr) printf '%s\n' "model.method=simclr" "tasks=[]" ;;
    simclr_rotation) printf '%s\n' "model.method=simclr" "tasks=[{name: rotation}]" ;;
    *) echo "unknown arm $1" >&2; exit 2 ;;
  esac
}

default_seeds() {
  case "$1" in byol|byol_rotation) echo "0 1" ;; *) echo "0" ;; esac
}

for arm in $ARMS; do
  for seed in ${SEEDS:-$(default_seeds "$arm")}; do
    name="${arm}-s${seed}"
    sets=(--set "train.seed=${seed}")
    mapfile -t overrides < <(arm_sets "$arm")
    for s in "${overrides[@]}" ${EXTRA:-}; do sets+=(--set "$s"); done
    resume=()
    [ -f "${OUT}/${name}/run.json" ] && resume=(--resume)
    echo "== ${name} $(date -u +%H:%M:%S)"
    python -m auxssl train "$CONFIG" --name "$name" --output-dir "$OUT" "${sets[@]}" "${resume[@]}"
  done
done

# results: the records of every run (no checkpoints) and the report
mkdir -p "$RESULTS/runs"
for run in "$OUT"/*/; do
  name=$(basename "$run")
  mkdir -p "$RESULTS/runs/$name"
  cp "$run/run.json" "$run/config.yaml" "$run/metrics.jsonl" "$RESULTS/runs/$name/"
done
python -m auxssl report "$RESULTS/runs" --out "$RESULTS/report" \
  --title "auxssl CPU study: CIFAR-10, ResNet-18 (width 16), 10k training images, 10 epochs"
