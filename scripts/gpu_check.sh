#!/usr/bin/env bash
# One-shot GPU check: writes one JSON file of what a GPU session records (docs/scale.md).
#   bash scripts/gpu_check.sh [--dry-run] [--out FILE] [--wheels DIR] [--budget SECONDS]
# --dry-run: CPU, tiny sizes, about a minute: checks the script end to end anywhere.
# --wheels DIR: install whichever of hydra-core, omegaconf, polars, rich, PyYAML and
#   pytorch-lightning the image lacks from the wheel files in DIR, without network
#   (default: .wheels/). Make the folder where a network exists:
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#     hydra-core omegaconf polars antlr4-python3-runtime PyYAML rich pytorch-lightning -d .wheels
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
WHEELS=""
ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --wheels=*) WHEELS="${1#*=}"; shift ;;
    -h|--help) sed -n 2,10p "$0"; exit 0 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
# the packages recbench imports that the image may lack (module -> distribution)
MISSING=$("$PY" - <<'PYEOF'
import importlib.util
need = {"hydra": "hydra-core", "omegaconf": "omegaconf", "polars": "polars", "rich": "rich",
        "yaml": "PyYAML", "pytorch_lightning": "pytorch-lightning"}
print(" ".join(d for m, d in need.items() if importlib.util.find_spec(m) is None))
PYEOF
)
if [[ -n "$MISSING" ]]; then
  WHEELS=${WHEELS:-.wheels}
  if [[ ! -d "$WHEELS" ]]; then
    echo "missing: $MISSING; there is no wheel folder $WHEELS: pass --wheels DIR" \
      "(see the top of this script)" >&2
    exit 2
  fi
  echo "installing $MISSING from $WHEELS (no network)"
  # shellcheck disable=SC2086
  "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" $MISSING
fi
# the checkout itself is imported from here: no build step, no network
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" scripts/gpu_check.py ${ARGS[@]+"${ARGS[@]}"}
