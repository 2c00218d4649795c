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
