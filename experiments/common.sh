# Shared by the experiment scripts (sourced, not run): argument handling and the environment check.
#
#   . "$(dirname "$0")/common.sh"; script_start "$0" "$@"

# The script's header comment (its usage) on -h/--help; any other argument is refused, since every knob is an
# environment variable; then checks that `python` can import auxssl.
script_start() {
  local script=$1
  shift
  case "${1:-}" in
    "") ;;
    -h|--help)
      sed -n '2,/^[^#]/p' "$script" | sed '$d' | sed 's/^# \{0,1\}//'
      exit 0 ;;
    *)
      echo "$(basename "$script"): unknown argument '$1': settings are environment variables (see --help)" >&2
      exit 2 ;;
  esac
  if ! python -c "import auxssl" 2>/dev/null; then
    echo "$(basename "$script"): python cannot import auxssl: activate the environment it is installed in" \
         "(. .venv/bin/activate after pip install -e .)" >&2
    exit 2
  fi
}

# The offline linear probe of issue 20, item 4, on one finished run's final checkpoint (the protocol:
# probe_finished_runs.sh's header), written to RUN/probe.json only when complete. THREADS: its threads (default 1).
probe_run() {
  OMP_NUM_THREADS=${THREADS:-1} python -m auxssl eval "$1" --linear --out "$1/probe.json.tmp" > /dev/null &&
    mv "$1/probe.json.tmp" "$1/probe.json"
}

# Whether a run directory holds a finished run: its last evaluation is at its last epoch (accuracy is read off
# finished schedules only).
run_finished() {
  [ -f "$1/run.json" ] && [ -f "$1/metrics.jsonl" ] && python - "$1" <<'PY'
import sys, yaml
from auxssl.eval.tracker import read_metrics
run = sys.argv[1]
epochs = yaml.safe_load(open(f"{run}/config.yaml"))["train"]["epochs"]
evals = read_metrics(run, "eval")
sys.exit(0 if evals and evals[-1]["epoch"] == epochs else 1)
PY
}
