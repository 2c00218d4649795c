#!/usr/bin/env bash
# The CPU convergence study on real CIFAR-10 (see experiments/results/cifar10-cpu/README.md):
#
#   experiments/run_cifar10_cpu_study.sh                      # every arm, two at a time, then the report
#   ARMS="byol byol_rotation" SEEDS="0 1" experiments/run_cifar10_cpu_study.sh
#
# Arms (all on experiments/configs/study_cifar10_cpu.yaml, only these settings differ):
#   byol                BYOL
#   byol_rotation       BYOL + rotation prediction (defaults: lambda 0.1, full resolution)
#   byol_rotation16     BYOL + rotation prediction on 16 px copies of the views (the cheap variant)
#   rotation_only       rotation prediction alone (no base loss; lambda 1)
#   simclr              SimCLR
#   simclr_rotation     SimCLR + rotation prediction
#   simsiam             SimSiam
#   simsiam_rotation    SimSiam + rotation prediction
#   swav                SwAV (queue of 3840 from epoch 4, prototypes frozen for the first epoch; see SWAV_ARGS)
#   swav_rotation       SwAV + rotation prediction (the same SwAV settings)
#   byol_rotation_lamL  BYOL + rotation with lambda L instead of 0.1 (L = 0.03, 0.3, 1; issue 20 item 5)
#   ARM_fnimagesP       ARM with false-negative elimination, the labels of a fraction P of the images revealed
#   ARM_fnpairsP        ARM with a fraction P of the false-negative pairs removed (both: noise.fn_elimination*;
#                       ARM must have in-batch negatives, e.g. simclr_fnpairs0.3, simclr_rotation_fnimages0.5)
#   ARM_goodR           ARM with a share R of its positive pairs forced to be good crops (noise.good_crop_fraction),
#                       e.g. byol_good0.5, byol_rotation_good1 (issue 20 item 7: the paper's Tables 1 and 2)
#   ARM@E               ARM trained with its own E-epoch cosine schedule (warm-up E/24 epochs, the same fraction as
#                       the 24-epoch runs), e.g. byol@8 byol_rotation@12 byol@40; runs are named ARM-eE-sSEED
# Knobs: ARMS; SEEDS (default "0 1 2" for the BYOL pair, "0 1" for the other arms); PARALLEL (runs at a time,
# default 2); THREADS per run (default nproc/PARALLEL: on 2 cores two 1-thread runs train ~8% more images/s than
# one 2-thread run); OUT (runs); RESULTS; EXTRA (--set ...); PROBE (default 1: each finished run's offline linear
# probe, RUN/probe.json, right after its training, while its checkpoint exists; 0: none); DRY_RUN=1 prints each
# run's command and trains nothing. Runs start in the order listed, seed by seed, so
# the first seed of every arm finishes before the later seeds. Interrupted runs resume from their last
# checkpoint; finished runs are not retrained (auxssl prints their results) and a run whose settings differ from
# the ones asked for is refused, never relabelled.
set -euo pipefail
. "$(dirname "$0")/common.sh"
script_start "$0" "$@"
cd "$(dirname "$0")/.."

CONFIG=experiments/configs/study_cifar10_cpu.yaml
ARMS=${ARMS:-"byol byol_rotation byol_rotation16 rotation_only simclr simclr_rotation"}
OUT=${OUT:-runs/cifar10-cpu-study}
RESULTS=${RESULTS:-experiments/results/cifar10-cpu}
PARALLEL=${PARALLEL:-2}
THREADS=${THREADS:-$(( $(nproc) / PARALLEL > 0 ? $(nproc) / PARALLEL : 1 ))}
[ -n "${DRY_RUN:-}" ] || mkdir -p "$OUT"
# SwAV at the study budget: the CIFAR recipe's queue (3840 embeddings, solo-learn) would start at epoch 50, which a
# 24-epoch run never reaches; started at epoch 4 it holds 30 batches of 128 for the last 20 of 24 epochs. The
# prototypes stay frozen for the first epoch (solo-learn: 2 of 1000 epochs; official SwAV: 313 iterations).
SWAV_ARGS="{queue_length: 3840, epoch_queue_starts: 4, freeze_prototypes_epochs: 1}"

noise_level() {  # arm level: a fraction in (0, 1]
  [[ "$2" =~ ^(1|0?\.[0-9]*[1-9][0-9]*)$ ]] || { echo "arm $1: the noise level must be a fraction in (0, 1], got '$2'" >&2; exit 2; }
}

arm_sets() {  # one override per line
  case "$1" in
    byol) printf '%s\n' "model.method=byol" "tasks=[]" ;;
    byol_rotation) printf '%s\n' "model.method=byol" "tasks=[{name: rotation}]" ;;
    byol_rotation16) printf '%s\n' "model.method=byol" "tasks=[{name: rotation, args: {size: 16}}]" ;;
    rotation_only) printf '%s\n' "model.method=none" "tasks=[{name: rotation, weight: 1.0}]" ;;
    simclr) printf '%s\n' "model.method=simclr" "tasks=[]" ;;
    simclr_rotation) printf '%s\n' "model.method=simclr" "tasks=[{name: rotation}]" ;;
    simsiam) printf '%s\n' "model.method=simsiam" "tasks=[]" ;;
    simsiam_rotation) printf '%s\n' "model.method=simsiam" "tasks=[{name: rotation}]" ;;
    swav) printf '%s\n' "model.method=swav" "model.method_args=${SWAV_ARGS}" "tasks=[]" ;;
    swav_rotation) printf '%s\n' "model.method=swav" "model.method_args=${SWAV_ARGS}" "tasks=[{name: rotation}]" ;;
    byol_rotation_lam0.03|byol_rotation_lam0.3|byol_rotation_lam1)
      printf '%s\n' "model.method=byol" "tasks=[{name: rotation, weight: ${1#byol_rotation_lam}}]" ;;
    *_fnimages*|*_fnpairs*)
      local spec=${1##*_fn} mode level
      mode=${spec%%[0-9.]*}; level=${spec#"$mode"}
      noise_level "$1" "$level" && arm_sets "${1%_fn*}" &&
        printf '%s\n' "noise.fn_elimination=${level}" "noise.fn_elimination_mode=${mode}" ;;
    *_good*)
      noise_level "$1" "${1##*_good}" && arm_sets "${1%_good*}" &&
        printf '%s\n' "noise.good_crop_fraction=${1##*_good}" ;;
    *) echo "unknown arm $1" >&2; exit 2 ;;
  esac
}

arm_seeds() {
  if [ -n "${SEEDS:-}" ]; then echo "$SEEDS"; return; fi
  case "${1%@*}" in byol|byol_rotation) echo "0 1 2" ;; *) echo "0 1" ;; esac
}

run_one() {  # arm[@epochs] seed
  local arm=${1%@*} name="$1-s$2" sets=(--set "train.seed=$2") resume=() overrides s
  if [[ "$1" == *@* ]]; then
    local epochs=${1#*@}
    [[ "$epochs" =~ ^[1-9][0-9]*$ ]] || { echo "bad epoch count in arm $1" >&2; return 1; }
    name="${arm}-e${epochs}-s$2"
    sets+=(--set "train.epochs=${epochs}" --set "optim.warmup_epochs=$(python -c "print(${epochs} / 24)")")
  fi
  mapfile -t overrides < <(arm_sets "$arm")
  for s in "${overrides[@]}" ${EXTRA:-}; do sets+=(--set "$s"); done
  [ -f "${OUT}/${name}/run.json" ] && resume=(--resume)
  local command=(python -m auxssl train "$CONFIG" --name "$name" --output-dir "$OUT" "${sets[@]}" "${resume[@]}")
  if [ -n "${DRY_RUN:-}" ]; then printf '%q ' "${command[@]}"; echo; return 0; fi
  echo "== ${name} start $(date -u +%H:%M:%S)"
  OMP_NUM_THREADS=$THREADS "${command[@]}" >> "${OUT}/${name}.log" 2>&1 || { echo "== ${name} failed: see ${OUT}/${name}.log" >&2; return 1; }
  if [ "${PROBE:-1}" != 0 ] && [ ! -f "${OUT}/${name}/probe.json" ]; then
    probe_run "${OUT}/${name}" >> "${OUT}/${name}.log" 2>&1 || { echo "== ${name} probe failed: see ${OUT}/${name}.log" >&2; return 1; }
  fi
  echo "== ${name} done $(date -u +%H:%M:%S)"
}

for arm in $ARMS; do arm_sets "${arm%@*}" > /dev/null || exit 2; done

queue=()  # "arm seed", seed-major so every arm's first seed comes first
round=0
while :; do
  added=0
  for arm in $ARMS; do
    seeds=($(arm_seeds "$arm"))
    if [ "$round" -lt "${#seeds[@]}" ]; then queue+=("$arm ${seeds[$round]}"); added=1; fi
  done
  [ "$added" -eq 1 ] || break
  round=$((round + 1))
done

failed=0
for item in "${queue[@]}"; do
  if [ -n "${DRY_RUN:-}" ]; then run_one $item; continue; fi
  while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n || failed=1; done
  run_one $item &
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || failed=1; done
[ "$failed" -eq 0 ] || { echo "some runs failed; the report is not written" >&2; exit 1; }
[ -z "${DRY_RUN:-}" ] || exit 0

# results: the records of every finished run under OUT (no checkpoints; a run in progress, perhaps another
# invocation's, is left out), replacing the same run's older records; other runs' records stay; then the report
mkdir -p "$RESULTS/runs"
for run in "$OUT"/*/; do
  run=${run%/}
  run_finished "$run" || continue
  name=$(basename "$run")
  rm -rf "${RESULTS:?}/runs/$name"
  mkdir "$RESULTS/runs/$name"
  cp "$run/run.json" "$run/config.yaml" "$run/metrics.jsonl" "$RESULTS/runs/$name/"
  if [ -f "$run/probe.json" ]; then cp "$run/probe.json" "$RESULTS/runs/$name/"; fi
done
python -m auxssl report "$RESULTS/runs" --out "$RESULTS/report" \
  --title "auxssl CPU study: CIFAR-10, ResNet-18 (width 16), 10k training images, 24 epochs"
