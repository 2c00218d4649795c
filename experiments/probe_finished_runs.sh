#!/usr/bin/env bash
# The offline linear probe of issue 20, item 4, on the final checkpoint of every finished run under OUT:
#
#   OUT=runs/cifar10-cpu-study experiments/probe_finished_runs.sh
#
# Protocol (auxssl's standard one, `auxssl eval RUN --linear`): the run's own evaluation data (its fixed 10k
# training images as the probe's training set, the full 10k test images), features of the final backbone under the
# evaluation transform at the run's image size (bf16 where native, as the run's kNN), standardised; a linear layer,
# SGD nesterov momentum 0.9, batch 256, lr 0.1 cosine, no weight decay, 100 epochs; top-1 at the last epoch. Also
# re-measures the kNN (k 200, T 0.1) of the same features. Writes RUN/probe.json; runs that have one are skipped,
# unfinished runs (last evaluation before their last epoch) are left alone. One thread each, PARALLEL at a time.
set -euo pipefail
. "$(dirname "$0")/common.sh"
script_start "$0" "$@"
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder of run directories}
PARALLEL=${PARALLEL:-1}

for run in "$OUT"/*/; do
  run=${run%/}
  [ ! -f "$run/probe.json" ] && run_finished "$run" || continue
  while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n; done
  echo "== probe $(basename "$run") $(date -u +%H:%M:%S)"
  THREADS=1 probe_run "$run" &
done
wait
