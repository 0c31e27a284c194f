"""recbench beside DeepCTR-Torch, in one sitting, on identical MovieLens-100K rows.

    python scripts/bench_peer.py                                  # every mapped model, 2 epochs
    python scripts/bench_peer.py --models deepfm,din --rounds 3 --threads 1
    python scripts/bench_peer.py --models deepfm --epochs 1 --limit-batches 5   # a smoke run
    python scripts/bench_peer.py --models deepfm --threads 2 --recbench-args "task.compile=true"

What it does:
1. Creates a separate virtual environment under ``--cache`` (default
   ``$RECBENCH_CACHE_DIR/bench_peer``, else ``~/.cache/recbench/bench_peer``) holding
   ``torch==<this torch>`` and ``deepctr-torch``; the peer is never a recbench dependency.
2. Prepares MovieLens-100K with recbench and exports its train/test rows (sparse codes, the
   genres multi-hot list, the behaviour history) to ``<cache>/data.npz`` for the peer: both
   libraries train on the same rows with the same codes and are scored on the same test rows.
   The export lives in the cache, outside the repository (the data's terms forbid copying it).
3. For each round and model, runs ``recbench train`` and the peer one after the other (the
   order swaps every round), each in its own process with the same thread count, batch size,
   embedding size, Adam learning rate and number of epochs, and records train samples/s of the
   last epoch (the first is warm-up when there are two or more; recbench's Throughput uses the
   same rule), process CPU seconds of training, test AUC, and the load average around each run.
   Neither side draws a progress bar (recbench ``trainer.enable_progress_bar=false``, the
   peer ``verbose=0``), and recbench writes no TensorBoard events (``logger=none``).
4. Prints a markdown table (median over rounds, ratio recbench / peer) and writes every
   measurement with the date, host and load to ``--out`` (JSON).

``--limit-batches N`` trains on N batches per epoch only (a smoke run): recbench takes its
first N shuffled batches and the peer the first N × batch rows, so the rows then differ.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent

# recbench model → (DeepCTR-Torch class, how the recbench config maps onto its arguments)
PEER_MODELS = {
    "lr": "WDL",  # WDL without its DNN: the linear part alone
    "fm": "DeepFM",  # DeepFM without its DNN: linear + FM
    "deepfm": "DeepFM",
    "wide_deep": "WDL",
    "dcn": "DCN",
    "dcn_v2": "DCNMix",
    "xdeepfm": "xDeepFM",
    "afm": "AFM",
    "nfm": "NFM",
    "autoint": "AutoInt",
    "pnn": "PNN",
    "din": "DIN",
}


def cache_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg).expanduser()
    base = os.environ.get("RECBENCH_CACHE_DIR") or Path.home() / ".cache" / "recbench"
    return Path(base) / "bench_peer"


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------------------- set-up


def ensure_venv(cache: Path) -> Path:
    """The peer's interpreter, installing it on first use."""
    import torch

    venv = cache / "peer-venv"
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import deepctr_torch, sklearn, torch; print(torch.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"installing DeepCTR-Torch into {venv} ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    version = torch.__version__.split("+")[0]
    pip = [str(python), "-m", "pip", "install", "-q"]
    # requests: deepctr_torch imports it for its version check
    installed = subprocess.run([*pip, f"torch=={version}", "deepctr-torch", "requests"])
    if installed.returncode != 0 or subprocess.run(probe).returncode != 0:
        raise SystemExit(
            f"could not install torch=={version} and deepctr-torch into {venv} (pip's message "
            "above; it needs the package index): run again where it is reachable, or pass "
            "--cache <folder> holding a peer-venv that has them"
        )
    return python


def export_data(cache: Path, dataset: str) -> Path:
    """recbench's prepared train/test rows and schema, as the peer reads them."""
    import numpy as np
    from hydra import compose, initialize_config_dir

    from recbench.cli import config_dir
    from recbench.data.pipeline import prepare

    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"dataset={dataset}"])
    data = prepare(cfg.dataset, log=lambda *_: None)
    out = cache / f"{dataset}.npz"
    meta = cache / f"{dataset}.json"
    if out.exists() and meta.exists() and json.loads(meta.read_text())["key"] == data.key:
        return out
    arrays = {}
    for split in ("train", "test"):
        for k, v in data.splits[split].items():
            arrays[f"{split}/{k}"] = v.numpy()
    fields = [
        {
            "name": f.name,
            "kind": f.kind,
            "vocab": f.vocab_size,
            "len": f.max_len,
            "shares": f.shares,
        }
        for f in data.schema.fields
    ]
    np.savez(out, **arrays)
    meta.write_text(json.dumps({"key": data.key, "fields": fields, "item": data.schema.item}))
    return out


# ---------------------------------------------------------------------------- runs


def model_config(model: str) -> dict:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "configs" / "model" / f"{model}.yaml")
    return {k: v for k, v in OmegaConf.to_container(cfg).items() if not str(k).startswith("_")}


def same_shape(model: str, embed_dim: int) -> list[str]:
    """recbench overrides that give a model the shape of its DeepCTR-Torch counterpart, so both
    sides do the same arithmetic: the library's AutoInt keeps the embedding width through every
    interacting layer (heads of embed_dim / heads units, where the paper and recbench's default
    use 32 units per head), and its WDL has no cross-product features on the wide side."""
    if model == "autoint":
        heads = int(model_config(model).get("num_heads", 2))
        return [f"model.attention_dim={embed_dim // heads}"]
    if model == "wide_deep":
        return ["model.crosses=[]"]
    return []


def run_recbench(model: str, args: argparse.Namespace, seed: int) -> dict:
    overrides = [
        f"model={model}",
        f"dataset={args.dataset}",
        f"trainer.max_epochs={args.epochs}",
        f"batch_size={args.batch_size}",
        "optimizer=adam",
        f"optimizer.lr={args.lr}",
        f"threads={args.threads}",
        f"seed={seed}",
        "logger=none",
        "record=false",
        "trainer.enable_progress_bar=false",
    ]
    if "embed_dim" in model_config(model):
        overrides.append(f"model.embed_dim={args.embed_dim}")
    if args.limit_batches:
        overrides.append(f"trainer.limit_train_batches={args.limit_batches}")
    overrides += same_shape(model, args.embed_dim)
    overrides += args.recbench_args.split()
    with tempfile.TemporaryDirectory() as outputs:
        env = {**os.environ, "RECBENCH_OUTPUTS": outputs}
        before = os.times()
        proc = subprocess.run(
            [sys.executable, "-m", "recbench.cli", "train", *overrides],
            env=env,
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        after = os.times()
        if proc.returncode != 0:
            raise RuntimeError(f"recbench {model} failed:\n{proc.stderr[-3000:]}")
        record = json.loads(next(Path(outputs).rglob("metrics.json")).read_text())
    perf = record["perf"]
    return {
        "samples_per_sec": perf.get("train_samples_per_sec"),
        "train_seconds": perf.get("train_seconds"),
        "test_auc": record["test"].get("auc"),
        "process_cpu_s": (after.children_user - before.children_user)
        + (after.children_system - before.children_system),
        "wall_s": perf.get("wall_seconds"),
    }


def run_peer(python: Path, model: str, args: argparse.Namespace, seed: int, data: Path) -> dict:
    spec = {
        "model": model,
        "peer": PEER_MODELS[model],
        "config": model_config(model),
        "data": str(data),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "embed_dim": args.embed_dim,
        "lr": args.lr,
        "threads": args.threads,
        "seed": seed,
        "limit_rows": args.limit_batches * args.batch_size if args.limit_batches else None,
    }
    proc = subprocess.run(
        [str(python), str(HERE), "--peer-worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),  # not the repository: the venv must not import recbench
    )
    if proc.returncode != 0:
        raise RuntimeError(f"DeepCTR-Torch {model} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- peer side


def peer_worker(spec: dict) -> None:
    """Runs inside the peer's venv: build the DeepCTR-Torch model, train, time, score."""
    import numpy as np
    import torch
    from deepctr_torch import models as peer
    from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat
    from sklearn.metrics import roc_auc_score

    torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(spec["seed"])
    blob = np.load(spec["data"])
    meta = json.loads(Path(spec["data"]).with_suffix(".json").read_text())
    d = int(spec["embed_dim"])
    fields = meta["fields"]
    sparse = [f for f in fields if f["kind"] == "sparse"]
    multi = [f for f in fields if f["kind"] == "multi"]
    din = spec["peer"] == "DIN"
    columns = [SparseFeat(f["name"], f["vocab"], embedding_dim=d) for f in sparse]
    columns += [
        VarLenSparseFeat(SparseFeat(f["name"], f["vocab"], embedding_dim=d), f["len"], "mean")
        for f in multi
    ]
    history = None
    if din:
        history = spec["config"].get("history", "hist_item_id")
        seq = next(f for f in fields if f["name"] == history)
        vocab = next(f["vocab"] for f in sparse if f["name"] == seq["shares"])
        columns.append(
            VarLenSparseFeat(
                SparseFeat(history, vocab, embedding_dim=d, embedding_name=seq["shares"]),
                seq["len"],
                length_name="hist_len",
            )
        )

    def inputs(split: str) -> tuple[dict, np.ndarray]:
        x = {f["name"]: blob[f"{split}/sparse"][:, i].astype("int64") for i, f in enumerate(sparse)}
        for f in multi:
            x[f["name"]] = blob[f"{split}/{f['name']}"].astype("int64")
        if din:
            h = blob[f"{split}/{history}"].astype("int64")
            x[history] = h
            x["hist_len"] = (h > 0).sum(1).astype("int64")
        y = blob[f"{split}/label"].astype("float32")
        if spec["limit_rows"] and split == "train":
            x = {k: v[: spec["limit_rows"]] for k, v in x.items()}
            y = y[: spec["limit_rows"]]
        return x, y

    cfg = spec["config"]
    hidden = tuple(cfg.get("hidden", (256, 128, 64)))
    common = {"l2_reg_embedding": 0.0, "seed": spec["seed"], "device": "cpu"}
    kind = spec["peer"]
    if spec["model"] in ("lr", "fm"):
        hidden = ()
    if kind == "DIN":
        model = peer.DIN(
            columns,
            [meta["item"]],
            dnn_hidden_units=hidden,
            l2_reg_embedding=0.0,
            seed=spec["seed"],
        )
    elif kind == "DeepFM":
        model = peer.DeepFM(columns, columns, dnn_hidden_units=hidden, l2_reg_linear=0.0, **common)
    elif kind == "WDL":
        model = peer.WDL(columns, columns, dnn_hidden_units=hidden, l2_reg_linear=0.0, **common)
    elif kind == "DCN":
        model = peer.DCN(
            columns, columns, cross_num=int(cfg.get("num_cross", 2)), dnn_hidden_units=hidden,
            l2_reg_linear=0.0, **common,
        )  # fmt: skip
    elif kind == "DCNMix":
        model = peer.DCNMix(
            columns, columns, cross_num=int(cfg.get("num_cross", 2)), dnn_hidden_units=hidden,
            low_rank=int(cfg.get("rank", 32)), num_experts=int(cfg.get("num_experts", 4)),
            l2_reg_linear=0.0, **common,
        )  # fmt: skip
    elif kind == "xDeepFM":
        model = peer.xDeepFM(
            columns, columns, cin_layer_size=tuple(cfg.get("cin", (256, 128))),
            cin_split_half=False,  # the paper's CIN, as recbench builds it: every map feeds on
            dnn_hidden_units=hidden, l2_reg_linear=0.0, **common,
        )  # fmt: skip
    elif kind == "AFM":
        model = peer.AFM(
            columns, columns, attention_factor=int(cfg.get("attention_dim", 8)),
            l2_reg_linear=0.0, **common,
        )  # fmt: skip
    elif kind == "NFM":
        model = peer.NFM(columns, columns, dnn_hidden_units=hidden, l2_reg_linear=0.0, **common)
    elif kind == "AutoInt":
        model = peer.AutoInt(
            columns, columns, att_layer_num=int(cfg.get("num_layers", 3)),
            att_head_num=int(cfg.get("num_heads", 2)), dnn_hidden_units=hidden, **common,
        )  # fmt: skip
    elif kind == "PNN":
        product = str(cfg.get("product", "inner"))
        model = peer.PNN(
            columns, dnn_hidden_units=hidden, use_inner=product in ("inner", "both"),
            use_outter=product in ("outer", "both"), **common,  # the library's spelling
        )  # fmt: skip
    else:
        raise SystemExit(f"no DeepCTR-Torch mapping for {kind}")
    model.compile(torch.optim.Adam(model.parameters(), lr=spec["lr"]), "binary_crossentropy")
    x, y = inputs("train")
    epochs = []
    for _ in range(int(spec["epochs"])):
        c0, t0 = time.process_time(), time.perf_counter()
        model.fit(x, y, batch_size=spec["batch_size"], epochs=1, verbose=0, shuffle=True)
        epochs.append((time.perf_counter() - t0, time.process_time() - c0))
    steady = epochs[1:] or epochs
    xt, yt = inputs("test")
    pred = model.predict(xt, batch_size=8192)
    print(
        json.dumps(
            {
                "samples_per_sec": len(y) * len(steady) / sum(t for t, _ in steady),
                "train_seconds": sum(t for t, _ in epochs),
                "train_cpu_s": sum(c for _, c in epochs),
                "test_auc": float(roc_auc_score(yt, pred.reshape(-1))),
                "torch": torch.__version__,
            }
        )
    )


# ---------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(PEER_MODELS))
    ap.add_argument("--dataset", default="movielens-100k")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--embed-dim", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--limit-batches", type=int, default=0)
    ap.add_argument("--cache", default=None)
    ap.add_argument(
        "--recbench-args",
        default="",
        help="extra recbench train overrides: 'task.compile=true trainer.precision=bf16-mixed'",
    )
    ap.add_argument("--out", default="bench_peer.json")
    ap.add_argument("--peer-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peer_worker:
        peer_worker(json.loads(args.peer_worker))
        return
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in PEER_MODELS]
    if unknown:
        raise SystemExit(
            f"no DeepCTR-Torch counterpart for {unknown}; choose from {list(PEER_MODELS)}"
        )
    cache = cache_dir(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    python = ensure_venv(cache)
    data = export_data(cache, args.dataset)
    runs = []
    for r in range(args.rounds):
        for i, model in enumerate(models):
            order = ["recbench", "peer"] if (r + i) % 2 == 0 else ["peer", "recbench"]
            for side in order:
                load_before = loadavg()
                if side == "recbench":
                    out = run_recbench(model, args, args.seed)
                else:
                    out = run_peer(python, model, args, args.seed, data)
                runs.append(
                    {"round": r, "model": model, "side": side, **out,
                     "loadavg_before": load_before, "loadavg_after": loadavg()}
                )  # fmt: skip
                print(
                    f"round {r} {model:<10} {side:<8} {out['samples_per_sec']:>10,.0f} samples/s "
                    f"AUC {out['test_auc']:.4f} load {load_before[0]}",
                    file=sys.stderr,
                )
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "settings": {k: v for k, v in vars(args).items() if k != "peer_worker"},
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    load = f"{runs[0]['loadavg_before'][0]}/{runs[-1]['loadavg_after'][0]}"
    print(f"{report['date']}, {report['cores']} cores, threads={args.threads}, load {load}")
    print(
        "\n| model | recbench samples/s | DeepCTR-Torch samples/s | ratio | recbench AUC |", end=""
    )
    print(" peer AUC |")
    print("|---|---:|---:|---:|---:|---:|")
    for model in models:
        med = {
            side: {
                k: statistics.median(
                    x[k] for x in runs if x["model"] == model and x["side"] == side
                )
                for k in ("samples_per_sec", "test_auc")
            }
            for side in ("recbench", "peer")
        }
        ratio = med["recbench"]["samples_per_sec"] / med["peer"]["samples_per_sec"]
        print(
            f"| {model} | {med['recbench']['samples_per_sec']:,.0f} | "
            f"{med['peer']['samples_per_sec']:,.0f} | {ratio:.2f}x | "
            f"{med['recbench']['test_auc']:.4f} | {med['peer']['test_auc']:.4f} |"
        )
    print(f"\nall measurements: {args.out}")


if __name__ == "__main__":
    main()
