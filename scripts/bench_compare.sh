#!/usr/bin/env bash
# Wall and CPU time of a whole lineage compare, report included, from a cold results store.
#
#   scripts/bench_compare.sh                               # lineage=ctr, movielens-100k, 3 seeds
#   scripts/bench_compare.sh lineage=ctr seeds=1 jobs=2    # any compare override
#
# Runs `recbench compare` into a fresh outputs folder (so every (model, seed) trains) under
# /usr/bin/time, then prints wall time, user + sys CPU seconds of the compare and all its runs,
# peak RSS, the number of runs, the summed per-run wall and train seconds from the results store
# (what is left is each run's fixed cost: imports, set-up, evaluation, writing), the date and
# the load average before and after. Keep the prepared-data cache warm (RECBENCH_CACHE_DIR) to
# time what a user pays on a second compare.
set -euo pipefail

args=("$@")
[ ${#args[@]} -eq 0 ] && args=(lineage=ctr dataset=movielens-100k seeds=3)
has_dataset=0
for a in "${args[@]}"; do [[ $a == dataset=* ]] && has_dataset=1; done
[ $has_dataset -eq 0 ] && args+=(dataset=movielens-100k)

out=$(mktemp -d "${TMPDIR:-/tmp}/bench_compare.XXXXXX")
echo "date: $(date -u +%FT%TZ)  host: $(hostname)  cores: $(nproc)"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "command: recbench compare ${args[*]}  (RECBENCH_OUTPUTS=$out)"
RECBENCH_OUTPUTS="$out" /usr/bin/time -f '%e %U %S %M' -o "$out/time.txt" \
    recbench compare "${args[@]}" >"$out/compare.log" 2>&1 || {
    echo "compare failed; log: $out/compare.log"
    tail -20 "$out/compare.log"
    exit 1
}
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
read -r wall user sys rss <"$out/time.txt"
python - "$out" "$wall" "$user" "$sys" "$rss" <<'PY'
import json, sys
from pathlib import Path

out, wall, user, sys_s, rss = sys.argv[1], *map(float, sys.argv[2:])
store = next(Path(out).rglob("results.jsonl"), None)
runs = [json.loads(line) for line in store.read_text().splitlines() if line.strip()] if store else []
run_wall = sum(r.get("perf", {}).get("wall_seconds") or 0 for r in runs)
train = sum(r.get("perf", {}).get("train_seconds") or 0 for r in runs)
print(f"wall {wall:.1f} s, CPU {user + sys_s:.1f} s (user {user:.1f}, sys {sys_s:.1f}), "
      f"peak RSS of one process {rss / 1024:.0f} MB")
if runs:
    print(f"{len(runs)} runs: in-run wall {run_wall:.1f} s, of which training {train:.1f} s; "
          f"outside the runs' own timers (each run's process start, imports and exit, and "
          f"the compare's own start and report) {wall - run_wall:.1f} s wall "
          f"({(wall - run_wall) / len(runs):.1f} s per run)")
print(f"outputs: {out}")
PY
