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

finished() {  # run_dir: its last evaluation is at its last epoch
  python - "$1" <<'PY'
import sys, yaml
from auxssl.eval.tracker import read_metrics
run = sys.argv[1]
epochs = yaml.safe_load(open(f"{run}/config.yaml"))["train"]["epochs"]
evals = read_metrics(run, "eval")
sys.exit(0 if evals and evals[-1]["epoch"] == epochs else 1)
PY
}

for run in "$OUT"/*/; do
  run=${run%/}
  [ -f "$run/run.json" ] && [ ! -f "$run/probe.json" ] && finished "$run" || continue
  while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n; done
  echo "== probe $(basename "$run") $(date -u +%H:%M:%S)"
  OMP_NUM_THREADS=1 python -m auxssl eval "$run" --linear --out "$run/probe.json.tmp" > /dev/null \
    && mv "$run/probe.json.tmp" "$run/probe.json" &
done
wait
