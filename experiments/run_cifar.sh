#!/usr/bin/env bash
# The paper's CIFAR comparison grid: every base method with and without rotation prediction, then the report.
#
#   experiments/run_cifar.sh                       # full setting: 7 methods x {base, +rotation}, 200 epochs, seed 0
#   EPOCHS=3 SUBSET=2000 TEST_SUBSET=1000 METHODS="byol simclr" DATASET=cifar10_jpg experiments/run_cifar.sh
#
# Knobs (environment variables):
#   METHODS      base methods to run              (default: all seven)
#   DATASET      cifar10 | cifar100 | cifar10_jpg (default: cifar10; cifar10_jpg = the offline shared archive)
#   EPOCHS       training epochs                  (default: 200, the paper's)
#   SUBSET       training images used             (default: all)
#   TEST_SUBSET  test images for the kNN          (default: all)
#   SEEDS        seeds, space-separated           (default: 0)
#   DEVICE       auto | cpu | cuda                (default: auto)
#   BATCH        batch size                       (default: 256)
#   EVAL_EVERY   kNN evaluation period in epochs  (default: EPOCHS/10, at least 1)
#   OUT          output folder                    (default: runs/cifar_grid)
#   EXTRA        further --set overrides, e.g. "train.precision=fp32 data.backend=torchvision"
# An existing run is resumed from its last checkpoint (a finished one only prints its results); if its settings differ
# from the ones asked for (e.g. other EPOCHS), auxssl refuses rather than relabel it: use another OUT.
set -euo pipefail
. "$(dirname "$0")/common.sh"
script_start "$0" "$@"
cd "$(dirname "$0")/.."

METHODS=${METHODS:-"byol simclr simsiam moco_v2 swav barlow_twins vicreg"}
DATASET=${DATASET:-cifar10}
EPOCHS=${EPOCHS:-200}
SEEDS=${SEEDS:-0}
DEVICE=${DEVICE:-auto}
BATCH=${BATCH:-256}
EVAL_EVERY=${EVAL_EVERY:-$(( EPOCHS / 10 > 0 ? EPOCHS / 10 : 1 ))}
OUT=${OUT:-runs/cifar_grid}
config_set=${DATASET/cifar10_jpg/cifar10}

for method in $METHODS; do
  for variant in "" "_rotation"; do
    for seed in $SEEDS; do
      config="${method}${variant}_${config_set}"  # a shipped config (auxssl/configs/), by name
      name="${method}${variant}-s${seed}"
      sets=(--set "data.dataset=${DATASET}" --set "train.epochs=${EPOCHS}" --set "train.seed=${seed}"
            --set "train.device=${DEVICE}" --set "data.batch_size=${BATCH}" --set "eval.every_epochs=${EVAL_EVERY}"
            --set "train.checkpoint_every_epochs=1")
      [ -n "${SUBSET:-}" ] && sets+=(--set "data.train_subset=${SUBSET}")
      [ -n "${TEST_SUBSET:-}" ] && sets+=(--set "eval.test_subset=${TEST_SUBSET}")
      for extra in ${EXTRA:-}; do sets+=(--set "$extra"); done
      resume=()
      [ -f "${OUT}/${name}/run.json" ] && resume=(--resume)
      echo "== ${name} (${config})"
      python -m auxssl train "$config" --name "$name" --output-dir "$OUT" "${sets[@]}" "${resume[@]}"
    done
  done
done

python -m auxssl report "$OUT" --out "${OUT}/report" --title "auxssl CIFAR grid (${DATASET}, ${EPOCHS} epochs)"
