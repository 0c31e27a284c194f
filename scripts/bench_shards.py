"""Out-of-core data at size: preparation speed and memory, and what serving from shards costs.

    python scripts/bench_shards.py --rows 20000000 --work /data/bench --out shards.json

On a generated Criteo-shaped file (``scripts/make_criteo.py``), each measurement in its own
process (so its peak RSS is its own):

- ``prepare``: streamed preparation into shards: rows/s, peak RSS;
- ``baseline``: the peak RSS of a process that imports everything and opens the cache;
- ``read_shards``: one training epoch through ``ShardLoader`` (memory-mapped, block-shuffled);
- ``read_memory``: the same epoch through ``BatchLoader`` after loading every shard into memory
  (``dataset.storage=memory``);
- ``read_polars``: reading the whole raw file with ``pl.read_csv`` (what a preparation that is not
  streamed starts with);
- ``train_shards`` / ``train_memory``: DeepFM training samples/s fed from each.

Needs a quiet machine for the speeds; peak RSS does not depend on load.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def dataset_cfg(data: Path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"dataset": OmegaConf.load(ROOT / "configs/dataset/criteo.yaml")})
    cfg.dataset.root = str(data)
    return cfg.dataset


def child(mode: str, data: Path, batch: int, steps: int) -> dict:
    import torch

    from recbench.data.loader import BatchLoader
    from recbench.data.pipeline import prepare
    from recbench.data.shards import ShardLoader

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if mode == "read_polars":
        import polars as pl

        frame = pl.read_csv(data / "train.txt", separator="\t", has_header=False)
        return {"rows": frame.height, "seconds": time.perf_counter() - t0}
    # "prepare" prepares even where the cache holds the data already; the others read that cache
    sharded = prepare(dataset_cfg(data), force=mode == "prepare", log=lambda m: None)
    rows = sum(sharded.info["rows"].values())
    if mode == "baseline":  # imports and an opened cache, nothing read: what the others add to
        return {"rows": rows}
    if mode == "prepare":
        seconds = time.perf_counter() - t0
        return {"rows": rows, "seconds": seconds, "rows_per_sec": rows / seconds}
    if mode in ("read_shards", "read_memory"):
        if mode == "read_shards":
            loader = ShardLoader(sharded.splits["train"], batch, shuffle=True, seed=0)
        else:
            loader = BatchLoader(sharded.to_memory().splits["train"], batch, shuffle=True, seed=0)
        t1 = time.perf_counter()
        n = checksum = 0
        for b in loader:
            n += len(b["label"])
            checksum += int(b["sparse"][:, 0].sum())  # touch the data
        seconds = time.perf_counter() - t1
        return {"rows": n, "seconds": seconds, "rows_per_sec": n / seconds, "check": checksum}
    # train_shards / train_memory: DeepFM steps fed from each path
    from omegaconf import OmegaConf

    from recbench.models import build_model
    from recbench.tasks.ctr import CTRTask

    torch.manual_seed(0)
    model = build_model(OmegaConf.load(ROOT / "configs/model/deepfm.yaml"), sharded.schema)
    task = CTRTask(model=model, optimizer=lambda params: torch.optim.Adam(params, lr=1e-3))
    opt = task.configure_optimizers()
    if mode == "train_shards":
        loader = ShardLoader(sharded.splits["train"], batch, shuffle=True, seed=0)
    else:
        loader = BatchLoader(sharded.to_memory().splits["train"], batch, shuffle=True, seed=0)
    done = rows_seen = 0
    t1 = None
    while done < steps + 5:
        for b in loader:
            if done == 5:
                t1 = time.perf_counter()  # warm-up steps dropped
            loss = task.loss(b)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            rows_seen += len(b["label"]) if done > 5 else 0
            if done >= steps + 5:
                break
    seconds = time.perf_counter() - t1
    return {"steps": steps, "rows": rows_seen, "samples_per_sec": rows_seen / seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=20_000_000)
    ap.add_argument("--work", type=Path, default=ROOT / "tmp" / "bench_shards")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=200, help="timed DeepFM steps")
    ap.add_argument("--skip", nargs="*", default=[], help="measurements to leave out")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    data = args.work / f"criteo-{args.rows}"
    if args.child:
        result = child(args.child, data, args.batch, args.steps)
        result["peak_rss_mb"] = round(peak_rss_mb(), 1)
        print(json.dumps(result))
        return 0
    os.environ.setdefault("RECBENCH_CACHE_DIR", str(args.work / "cache"))
    out: dict = {"rows": args.rows, "batch": args.batch, "file": str(data / "train.txt")}
    if not (data / "train.txt").exists():
        spec = importlib.util.spec_from_file_location("mk", ROOT / "scripts/make_criteo.py")
        mk = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mk)
        out["generate"] = mk.write(data / "train.txt", args.rows, 0, 0.25, 250_000, 1.0)
    out["file_mb"] = round((data / "train.txt").stat().st_size / 2**20, 1)
    modes = ["prepare", "baseline", "read_shards", "read_memory", "read_polars", "train_shards"]
    modes.append("train_memory")
    for mode in [m for m in modes if m not in args.skip]:
        cmd = [sys.executable, __file__, "--child", mode, "--rows", str(args.rows)]
        cmd += ["--work", str(args.work), "--batch", str(args.batch), "--steps", str(args.steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            out[mode] = {"error": proc.stderr[-2000:]}
        else:
            out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(mode, out[mode], flush=True)
    text = json.dumps(out, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
