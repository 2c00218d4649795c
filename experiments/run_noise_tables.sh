#!/usr/bin/env bash
# The structure of the paper's noise tables (Addepalli et al., ECCV 2022), at a budget set by knobs, then a report
# per table that puts accuracy next to the noise each run measured (noise/fn_rate_raw, noise/fn_rate, noise/fp_rate).
#
#   Table 1: SimCLR ± rotation, false-negative elimination with p of the labels revealed (LEVELS1, default 0 0.3 0.5 1)
#   Table 2: BYOL ± rotation, a share r of positive pairs forced to be good crops      (LEVELS2, default 0 0.25 0.5 1)
#
#   experiments/run_noise_tables.sh                                  # the paper's setting: 200 epochs, full CIFAR-10
#   TABLES=1 EPOCHS=5 SUBSET=10000 WIDTH=16 DATASET=cifar10_jpg EXTRA="optim.name=sgd optim.lr=0.05 optim.weight_decay=5e-4 optim.warmup_epochs=1" \
#     experiments/run_noise_tables.sh                                # a short CPU run of Table 1
#
# Knobs (environment variables):
#   TABLES       which tables                     (default: "1 2")
#   LEVELS1      Table 1's fractions p             (default: "0 0.3 0.5 1")
#   LEVELS2      Table 2's fractions r             (default: "0 0.25 0.5 1")
#   DATASET      cifar10 | cifar10_jpg             (default: cifar10; cifar10_jpg = the offline shared archive)
#   EPOCHS       training epochs                   (default: 200)
#   SUBSET       training images used              (default: all)
#   TEST_SUBSET  test images for evaluation        (default: all)
#   WIDTH        ResNet-18 base width              (default: 64, the standard network)
#   BATCH        batch size                        (default: 256)
#   SEEDS        seeds, space-separated            (default: 0)
#   EVAL_EVERY   kNN evaluation period in epochs   (default: EPOCHS/10, at least 1)
#   OUT          output folder                     (default: runs/noise_tables)
#   EXTRA        further --set overrides, space-separated
# An existing run is resumed from its last checkpoint (a finished one only prints its results); if its settings differ
# from the ones asked for (e.g. other EPOCHS), auxssl refuses rather than relabel it: use another OUT.
set -euo pipefail
. "$(dirname "$0")/common.sh"
script_start "$0" "$@"
cd "$(dirname "$0")/.."

TABLES=${TABLES:-"1 2"}
LEVELS1=${LEVELS1:-"0 0.3 0.5 1"}
LEVELS2=${LEVELS2:-"0 0.25 0.5 1"}
DATASET=${DATASET:-cifar10}
EPOCHS=${EPOCHS:-200}
WIDTH=${WIDTH:-64}
BATCH=${BATCH:-256}
SEEDS=${SEEDS:-0}
EVAL_EVERY=${EVAL_EVERY:-$(( EPOCHS / 10 > 0 ? EPOCHS / 10 : 1 ))}
OUT=${OUT:-runs/noise_tables}

for table in $TABLES; do
  case "$table" in
    1) config=experiments/configs/noise_fn_elimination_simclr_cifar10.yaml; knob=noise.fn_elimination
       levels=$LEVELS1; method=simclr; title="Table 1 structure: SimCLR, false-negative elimination" ;;
    2) config=experiments/configs/noise_good_crops_byol_cifar10.yaml; knob=noise.good_crop_fraction
       levels=$LEVELS2; method=byol; title="Table 2 structure: BYOL, share of good positive pairs" ;;
    *) echo "unknown table $table (choose 1 or 2)" >&2; exit 2 ;;
  esac
  for level in $levels; do
    for tasks in "[]" "[{name: rotation}]"; do
      for seed in $SEEDS; do
        variant=$method; [ "$tasks" != "[]" ] && variant=${method}_rotation
        name="${variant}-${knob#noise.}${level}-s${seed}"
        sets=(--set "data.dataset=${DATASET}" --set "train.epochs=${EPOCHS}" --set "train.seed=${seed}"
              --set "model.width=${WIDTH}" --set "data.batch_size=${BATCH}" --set "eval.every_epochs=${EVAL_EVERY}"
              --set "train.checkpoint_every_epochs=1" --set "tasks=${tasks}" --set "${knob}=${level}")
        [ -n "${SUBSET:-}" ] && sets+=(--set "data.train_subset=${SUBSET}")
        [ -n "${TEST_SUBSET:-}" ] && sets+=(--set "eval.test_subset=${TEST_SUBSET}")
        for extra in ${EXTRA:-}; do sets+=(--set "$extra"); done
        dir="${OUT}/table${table}"
        resume=()
        [ -f "${dir}/${name}/run.json" ] && resume=(--resume)
        echo "== table ${table}: ${name}"
        python -m auxssl train "$config" --name "$name" --output-dir "$dir" "${sets[@]}" "${resume[@]}"
      done
    done
  done
  python -m auxssl report "${OUT}/table${table}" --out "${OUT}/table${table}/report" \
    --title "${title} (${DATASET}, ${EPOCHS} epochs)"
done
