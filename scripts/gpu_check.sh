#!/usr/bin/env bash
# One-shot GPU check: writes one JSON file of what a GPU session records (docs/scale.md).
#   bash scripts/gpu_check.sh [--dry-run] [--out FILE] [--wheels DIR] [--budget SECONDS]
# --dry-run: CPU, tiny sizes, about a minute: checks the script end to end anywhere.
# --wheels DIR: install hydra-core, omegaconf and polars from wheel files in DIR, without network
#   (default: .wheels/ when the packages are missing). Make the folder where a network exists:
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#     hydra-core omegaconf polars antlr4-python3-runtime PyYAML -d .wheels
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
WHEELS=""
ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --wheels=*) WHEELS="${1#*=}"; shift ;;
    -h|--help) sed -n 2,8p "$0"; exit 0 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
if ! "$PY" -c "import hydra, omegaconf, polars" 2>/dev/null; then
  WHEELS=${WHEELS:-.wheels}
  if [[ ! -d "$WHEELS" ]]; then
    echo "hydra-core/omegaconf/polars are not installed and there is no wheel folder $WHEELS;" \
      "pass --wheels DIR (see the top of this script)" >&2
    exit 2
  fi
  echo "installing hydra-core, omegaconf, polars from $WHEELS (no network)"
  "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" \
    hydra-core omegaconf polars antlr4-python3-runtime PyYAML
fi
# the checkout itself is imported from here: no build step, no network
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" scripts/gpu_check.py ${ARGS[@]+"${ARGS[@]}"}
