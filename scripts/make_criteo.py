"""Write a Criteo-shaped TSV with a planted click model, in chunks (any number of rows in little
memory), and every row's true click probability beside it.

    python scripts/make_criteo.py --rows 1000000 --out /data/criteo-synth/train.txt
    recbench train model=deepfm dataset=criteo dataset.root=/data/criteo-synth

Layout as the Kaggle ``train.txt``: label, I1..I13 (non-negative integer counts, some missing),
C1..C26 (8-hex-digit hashes, some missing), tab-separated, no header. The click model::

    logit = b0 + sum_f w_f[C_f] + sum_(a,b) V_ab[C_a, C_b] + dense(I1, I2, I3)

first-order weights on every categorical field, pairwise crosses on ``CROSSES`` (values the
first-order terms cannot express), and a dense effect (linear in log1p(I1), a bump in I2, a
threshold on I3); ``b0`` is solved so the mean click rate is ``--ctr``. ``<stem>.oracle.npy``
(float32, one per row) holds the true probability: ``dataset=criteo`` reads it (adapter option
``oracle: auto``) and reports the oracle AUC beside the model's. The same ``--seed`` gives the
same file at any chunk size.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

N_DENSE, N_SPARSE = 13, 26
CROSSES = ((0, 1), (2, 5), (3, 7), (10, 12))  # pairs of categorical fields (0-based)
FIRST_ORDER_STD, CROSS_STD = 0.35, 0.7


def _mix(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


class World:
    """The planted tables; identical for one seed."""

    def __init__(self, seed: int, ctr: float, scale: float = 1.0) -> None:
        rng = np.random.default_rng([seed, 0])
        # cardinalities from 4 to ~100k, like the real fields' spread
        self.cards = np.maximum(4, (10 ** rng.uniform(0.6, 5.0, N_SPARSE) * scale)).astype(int)
        for a, b in CROSSES:  # crossed fields are small enough for their pairs to recur
            self.cards[[a, b]] = np.minimum(self.cards[[a, b]], 40)
        self.zipf = rng.uniform(1.05, 1.6, N_SPARSE)
        self.sparse_missing = np.where(rng.random(N_SPARSE) < 0.35, rng.uniform(0.05, 0.5), 0.0)
        self.dense_missing = np.where(rng.random(N_DENSE) < 0.5, rng.uniform(0.02, 0.45), 0.0)
        self.dense_scale = 10 ** rng.uniform(0.3, 3.5, N_DENSE)
        self.w = [rng.normal(0, FIRST_ORDER_STD, c) for c in self.cards]
        self.v = {
            p: rng.normal(0, CROSS_STD, (self.cards[p[0]], self.cards[p[1]])) for p in CROSSES
        }
        # the strings written for value k of field f: a fixed 32-bit hash in hex
        self.hexes = [
            pl.Series(
                [f"{h:08x}" for h in (_mix(np.arange(c) + (f + 1) * 1_000_003) >> np.uint64(32))]
            )
            for f, c in enumerate(self.cards)
        ]
        self.b0 = 0.0
        probe = self.chunk(np.random.default_rng([seed, 1]), 50_000)
        lo, hi = -12.0, 12.0
        for _ in range(60):  # mean click probability = ctr
            self.b0 = (lo + hi) / 2
            mean = (1 / (1 + np.exp(-(probe["logit"] + self.b0)))).mean()
            lo, hi = (self.b0, hi) if mean < ctr else (lo, self.b0)

    def chunk(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        codes = np.empty((n, N_SPARSE), np.int64)
        for f in range(N_SPARSE):
            # truncated Zipf: a few frequent values and a long tail
            ranks = np.arange(1, self.cards[f] + 1, dtype=np.float64)
            p = ranks ** -self.zipf[f]
            codes[:, f] = rng.choice(self.cards[f], n, p=p / p.sum())
        missing = rng.random((n, N_SPARSE)) < self.sparse_missing
        dense = rng.geometric(1 / self.dense_scale, (n, N_DENSE)) - 1
        dense_missing = rng.random((n, N_DENSE)) < self.dense_missing
        logit = np.zeros(n)
        for f in range(N_SPARSE):
            logit += np.where(missing[:, f], 0.0, self.w[f][codes[:, f]])
        for (a, b), table in self.v.items():
            both = ~missing[:, a] & ~missing[:, b]
            logit += np.where(both, table[codes[:, a], codes[:, b]], 0.0)
        x = np.log1p(dense.astype(np.float64))
        z = (x - np.log1p(self.dense_scale)) / 1.2
        eff = 0.5 * z[:, 0] - 0.6 * np.exp(-(z[:, 1] ** 2)) + 0.4 * (z[:, 2] > 0)
        logit += np.where(dense_missing[:, :3].any(1), 0.0, eff)
        return {
            "codes": codes,
            "missing": missing,
            "dense": dense,
            "dense_missing": dense_missing,
            "logit": logit,
        }

    def frame(self, rng: np.random.Generator, n: int) -> tuple[pl.DataFrame, np.ndarray]:
        c = self.chunk(rng, n)
        prob = 1 / (1 + np.exp(-(c["logit"] + self.b0)))
        label = (rng.random(n) < prob).astype(np.int8)
        cols: dict[str, pl.Series] = {"label": pl.Series("label", label)}
        for j in range(N_DENSE):
            cols[f"I{j + 1}"] = pl.Series(f"I{j + 1}", c["dense"][:, j]).set(
                pl.Series(c["dense_missing"][:, j]), None
            )
        for f in range(N_SPARSE):
            s = self.hexes[f].gather(c["codes"][:, f]).rename(f"C{f + 1}")
            cols[f"C{f + 1}"] = s.set(pl.Series(c["missing"][:, f]), None)
        return pl.DataFrame(list(cols.values())), prob.astype(np.float32)


def write(out: Path, rows: int, seed: int, ctr: float, chunk_rows: int, scale: float) -> dict:
    """Write ``out`` and ``<stem>.oracle.npy`` (both atomically); returns a summary."""
    t0 = time.perf_counter()
    world = World(seed, ctr, scale)
    out.parent.mkdir(parents=True, exist_ok=True)
    oracle_path = out.with_name(f"{out.name.split('.')[0]}.oracle.npy")
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_oracle = oracle_path.with_name(oracle_path.name + ".tmp.npy")
    oracle = np.lib.format.open_memmap(tmp_oracle, mode="w+", dtype=np.float32, shape=(rows,))
    clicks = 0
    with open(tmp_out, "wb") as fh:
        for i, start in enumerate(range(0, rows, chunk_rows)):
            # chunk i draws from its own stream (seed, 2, i); the seed alone fixes the tables
            n = min(chunk_rows, rows - start)
            frame, prob = world.frame(np.random.default_rng([seed, 2, i]), n)
            frame.write_csv(fh, separator="\t", include_header=False, null_value="")
            oracle[start : start + n] = prob
            clicks += int(frame["label"].sum())
    oracle.flush()
    del oracle
    os.replace(tmp_out, out)
    os.replace(tmp_oracle, oracle_path)
    return {
        "file": str(out),
        "oracle": str(oracle_path),
        "rows": rows,
        "clicks": clicks,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=Path("criteo-synth/train.txt"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ctr", type=float, default=0.25, help="mean click rate (Kaggle: ~0.256)")
    ap.add_argument("--chunk-rows", type=int, default=250_000, help="rows generated at a time")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the cardinalities")
    args = ap.parse_args(argv)
    if args.rows < 1 or args.chunk_rows < 1:
        ap.error("--rows and --chunk-rows must be >= 1")
    summary = write(args.out, args.rows, args.seed, args.ctr, args.chunk_rows, args.scale)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
