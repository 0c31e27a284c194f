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
# nproc alone would report OMP_NUM_THREADS when that is set
echo "date: $(date -u +%FT%TZ)  host: $(hostname)  cores: $(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"
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
python - "$out" "$wall" "$user" "$sys" "$rss" "${args[@]}" <<'PY'
import json, sys
from pathlib import Path

out, wall, user, sys_s, rss = sys.argv[1], *map(float, sys.argv[2:6])
store = next(Path(out).rglob("results.jsonl"), None)
runs = [json.loads(line) for line in store.read_text().splitlines() if line.strip()] if store else []
run_wall = sum(r.get("perf", {}).get("wall_seconds") or 0 for r in runs)
train = sum(r.get("perf", {}).get("train_seconds") or 0 for r in runs)
print(f"wall {wall:.1f} s, CPU {user + sys_s:.1f} s (user {user:.1f}, sys {sys_s:.1f}), "
      f"peak RSS of one process {rss / 1024:.0f} MB")
if runs:
    print(f"{len(runs)} runs: in-run wall {run_wall:.1f} s, of which training {train:.1f} s")
    # each run as the compare timed it, process start to exit ("✓ lr seed 1: ... (3 s)")
    import re

    log = (Path(out) / "compare.log").read_text(errors="replace")
    timed = [float(s) for s in re.findall(r"seed \d+: test .* \((\d+) s\)", log)]
    if len(timed) == len(runs):
        outside = sum(timed) - run_wall
        print(f"per run, outside its own timers (process start or fork, imports, exit): "
              f"{outside:.1f} s in all, {outside / len(runs):.1f} s a run "
              f"(compare-timed {sum(timed):.0f} s, whole seconds)")
        jobs = next((int(a.split("=", 1)[1]) for a in sys.argv[6:] if a.startswith("jobs=")), 0)
        if jobs:
            rest = wall - sum(timed) / jobs
            print(f"compare start, report and idle job slots: {rest:.1f} s wall "
                  f"(wall minus the compare-timed run seconds / {jobs} slots)")
print(f"outputs: {out}")
PY
