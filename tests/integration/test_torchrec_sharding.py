"""``trainer=torchrec``: embedding tables sharded by TorchRec on two CPU ranks (gloo).

The sharded lookup returns the rows a plain ``FeatureEmbedding`` with the same weights returns,
one SGD step changes the tables and the dense weights exactly as one process does on the two
ranks' rows together, and a short ``recbench train`` scores like the plain single-process run.
The tests that need TorchRec skip where it does not import (``pip install 'recbench[torchrec]'``,
docs/scale.md); the rest run everywhere.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from recbench.data.schema import FeatureSchema, Field
from recbench.distributed.embedding import SERVED, check_pooled_only
from recbench.errors import ConfigError
from recbench.models.layers import FeatureEmbedding, FeatureLinear
from recbench.testing import random_batch, toy_schema
from tests import cli

WHY = "TorchRec does not import here: pip install 'recbench[torchrec]' (docs/scale.md)"


def needs_torchrec() -> None:
    pytest.importorskip("torchrec", reason=WHY)
    pytest.importorskip("torchrec.distributed.model_parallel", reason=WHY)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- everywhere (no TorchRec needed)


def test_importing_recbench_does_not_import_torchrec():
    code = (
        "import sys, recbench, recbench.train, recbench.cli, recbench.distributed.settings; "
        "print('torchrec' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_models_reading_single_rows_are_refused_and_the_rest_pass():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    configs = Path(__file__).resolve().parents[2] / "configs" / "model"
    schema = toy_schema()
    batch = random_batch(schema, 8)
    for name in ("deepfm", "dcn_v2", "wide_deep", "din"):
        torch.manual_seed(0)
        cfg = OmegaConf.load(configs / f"{name}.yaml")
        model = instantiate(cfg, _partial_=True)(schema=schema)
        if name in SERVED:
            check_pooled_only(model, batch, name)
            out = model(batch)  # the probe leaves the model as it was
            assert all(
                type(m) is FeatureEmbedding
                for m in model.modules()
                if isinstance(m, FeatureEmbedding)
            )
            assert torch.isfinite(out).all()
        else:
            with pytest.raises(ConfigError, match="pooled fields.*trainer=torchrec trains"):
                check_pooled_only(model, batch, name)


def test_without_torchrec_the_error_names_the_install(monkeypatch):
    from recbench.distributed import embedding

    real_import = __import__

    def no_torchrec(name, *args, **kwargs):
        if name.startswith("torchrec"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr("builtins.__import__", no_torchrec)
    with pytest.raises(ConfigError, match=r"pip install 'recbench\[torchrec\]'.*torch 2\.14"):
        embedding.require_torchrec()


def test_the_torchrec_trainer_config_passes_the_checks(tmp_path):
    from hydra import compose, initialize_config_dir

    from recbench.cli import config_dir
    from recbench.validate import problems_of

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["model=deepfm", "trainer=torchrec", f"paths.run_dir={tmp_path}"],
        )
        bad = compose(
            "train",
            overrides=[
                "trainer=torchrec",
                "+trainer.shardin=row_wise",
                f"paths.run_dir={tmp_path}",
            ],
        )
    assert list(problems_of(cfg, "train", tmp_path).items.values()) == []
    assert "shardin" in " ".join(problems_of(bad, "train", tmp_path).items.values())


# ---------------------------------------------------------------- two gloo ranks (TorchRec)


def test_a_limited_test_on_two_ranks_names_the_rows_it_scored():
    """Rank r scores the first rows of its share r::w; predictions.npz and test_coverage hold
    exactly those rows, so a partial test never claims the whole split."""
    from recbench.distributed.train import scored_rows

    assert scored_rows(7, [4, 3]).tolist() == list(range(7))  # every row once
    assert scored_rows(10, [2, 2]).tolist() == [0, 1, 2, 3]  # the first batches of each share
    assert scored_rows(9, [3, 2]).tolist() == [0, 1, 2, 3, 4]
    assert scored_rows(9, [3, 0]).tolist() == [0, 2, 4]  # a rank that scored none
    assert scored_rows(5, [5]).tolist() == list(range(5))


def test_the_tables_optimizer_follows_the_run_or_is_refused_with_the_fix():
    needs_torchrec()
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    from recbench.distributed.embedding import fused_params

    adam = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 3e-3, "weight_decay": 0.0}
    got = fused_params({**adam, "betas": [0.8, 0.99]}, device_type="cuda")
    assert got == {
        "optimizer": EmbOptimType.ADAM,
        "learning_rate": 3e-3,
        "beta1": 0.8,
        "beta2": 0.99,
        "eps": 1e-8,
    }
    with pytest.raises(ConfigError, match="CPU kernels .* trainer.table_optimizer=adagrad"):
        fused_params(adam, device_type="cpu")  # FBGEMM has no Adam on CPU
    chosen = fused_params(adam, "rowwise_adagrad", 0.05, device_type="cpu")
    assert chosen == {"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "learning_rate": 0.05}
    sgd = fused_params({"_target_": "torch.optim.SGD", "lr": 0.1}, device_type="cpu")
    assert sgd == {"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 0.1}
    with pytest.raises(ConfigError, match="momentum"):
        fused_params({"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9})
    with pytest.raises(ConfigError, match="no fused form.*trainer.table_optimizer"):
        fused_params({"_target_": "recbench.optim.PerPartOptimizer", "parts": {}})


SCHEMA_FIELDS = (
    Field("user_id", "sparse", vocab_size=23),
    Field("item_id", "sparse", vocab_size=41),
    Field("age", "sparse", vocab_size=5),
    Field("genres", "multi", vocab_size=9, max_len=4),
    Field("price", "dense"),
)
DIM = 6  # not a multiple of 4: the shards are padded to 8 columns and read back at 6


class EmbeddingAndLinear(nn.Module):
    """The two tables a CTR model holds (DeepFM's): field vectors and first-order weights,
    followed by a dense layer, so the DDP-replicated part has a gradient too."""

    def __init__(self, schema: FeatureSchema) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(schema, DIM, init_std=0.5)
        self.linear = FeatureLinear(schema)
        nn.init.normal_(self.linear.weights.table.weight, std=0.5)
        self.out = nn.Linear(self.embedding.num_fields * DIM, 1)

    def forward(self, batch):
        v = self.embedding(batch)
        return v, self.linear(batch) + self.out(v.flatten(1)).squeeze(-1)


def rank_batch(schema: FeatureSchema, rank: int) -> dict:
    b = random_batch(schema, 12, seed=100 + rank)
    b["genres"][0] = 0  # an empty bag: its mean is 0
    b["genres"][1, 1:] = 0  # one id
    return b


def _worker(rank: int, world: int, port: int, sharding: str) -> None:
    import torch.distributed as dist

    from recbench.distributed.embedding import (
        distribute,
        full_table,
        fused_params,
        shard_feature_embeddings,
    )

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        schema = FeatureSchema(SCHEMA_FIELDS)
        torch.manual_seed(0)
        model = EmbeddingAndLinear(schema)
        plain = copy.deepcopy(model)
        sharded = shard_feature_embeddings(model)
        assert [p for p, _ in sharded] == ["embedding", "linear.weights"]
        lr = 0.3
        tables = fused_params({"_target_": "torch.optim.SGD", "lr": lr})
        dmp = distribute(model, sharded, sharding, tables, torch.device("cpu"))

        # where the rows live: one rank per table (table-wise), a slice on every rank (row-wise)
        state = dmp.state_dict()
        for path, m in sharded:
            for key in m.keys:
                local = state[f"{path}.ebc.embedding_bags.{key}.weight"].local_shards()
                held = torch.tensor([sum(s.tensor.shape[0] for s in local)])
                holders = [torch.zeros_like(held) for _ in range(world)]
                dist.all_gather(holders, held)
                counts = [int(h) for h in holders]
                assert sum(counts) == m.schema[m_field(m, key)].vocab_size
                if sharding == "table_wise":
                    assert sorted(c > 0 for c in counts) == [False, True], counts
                else:
                    assert all(c > 0 for c in counts), counts

        # the lookup: the plain model's rows (mean-pooled bags to float error)
        batch = rank_batch(schema, rank)
        v, logits = dmp(batch)
        v_ref, logits_ref = plain(batch)
        n_sparse = len(schema.sparse)
        if sharding == "table_wise":  # a sparse field's vector is its row, bit for bit
            assert torch.equal(v[:, :n_sparse], v_ref[:, :n_sparse])
        # row-wise pooling is summed across ranks by a reduce-scatter: measured within 2e-6
        # relative of the row on gloo
        torch.testing.assert_close(v, v_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logits, logits_ref, rtol=0, atol=1e-5)

        # one SGD step on both ranks' rows = one plain step on the two batches together
        dense = [p for n, p in dmp.named_parameters() if ".ebc." not in n]
        opt = torch.optim.SGD(dense, lr=lr)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["label"])
        loss.backward()  # the sharded tables take their step in here
        opt.step()
        both = [rank_batch(schema, r) for r in range(world)]
        joined = {k: torch.cat([b[k] for b in both]) for k in both[0]}
        plain_opt = torch.optim.SGD(plain.parameters(), lr=lr)
        _, ref = plain(joined)
        torch.nn.functional.binary_cross_entropy_with_logits(ref, joined["label"]).backward()
        plain_opt.step()
        for path, m in sharded:
            ref_table = plain.get_submodule(path).table.weight.detach()
            ref_m = plain.get_submodule(path)
            for key, f in zip(m.keys, [*schema.sparse, *schema.multi]):
                got = full_table(dmp, m, key, path)
                want = ref_table[ref_m.offset_of[f.name] : ref_m.offset_of[f.name] + f.vocab_size]
                torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        unwrapped = dict(dmp.named_parameters())
        for name, p in plain.named_parameters():
            if ".table." in name or name.endswith("table.weight"):
                continue
            torch.testing.assert_close(unwrapped[name].detach(), p.detach(), rtol=0, atol=1e-6)
    finally:
        dist.destroy_process_group()


def m_field(module, key: str) -> str:
    fields = [*module.schema.sparse, *module.schema.multi]
    return fields[module.keys.index(key)].name


@pytest.mark.parametrize("sharding", ["table_wise", "row_wise"])
def test_two_ranks_look_up_and_train_like_one_plain_table(sharding):
    needs_torchrec()
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, free_port(), sharding), nprocs=2, join=True)


# ---------------------------------------------------------------- recbench train, end to end

SMALL = [
    "model=deepfm",
    "++dataset.world.n_users=300",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=12",
    "trainer.enable_progress_bar=false",
    "optimizer._target_=torch.optim.SGD",
    "optimizer.lr=0.5",
    "threads=1",
    "logger=none",
]


def recbench(*args: str, cwd: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = cli.run(["train", *args], cwd, env, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(
            f"recbench train failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )


def test_two_sharded_ranks_score_like_the_plain_single_process_run(tmp_path):
    """Batch 64 on each of two ranks (table-wise and row-wise) against batch 128 in one plain
    process (Lightning, FeatureEmbedding), SGD on every weight: the same rows per step, the same
    updates, so the same validation and test scores up to float error."""
    needs_torchrec()
    recbench(*SMALL, "batch_size=128", f"hydra.run.dir={tmp_path / 'plain'}", cwd=tmp_path)
    sharded = [
        "trainer=torchrec",
        "trainer.devices=2",
        "trainer.table_optimizer=sgd",
        "trainer.table_lr=null",
        "batch_size=64",
    ]
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    logits = np.load(tmp_path / "plain" / "predictions.npz")["logits"]
    for sharding in ("table_wise", "row_wise"):
        run = tmp_path / sharding
        recbench(
            *SMALL, *sharded, f"trainer.sharding={sharding}", f"hydra.run.dir={run}", cwd=tmp_path
        )
        got = json.loads((run / "metrics.json").read_text())
        assert got["torchrec"]["sharding"] == sharding and got["perf"]["devices"] == 2
        for split in ("val", "test"):
            for metric in ("auc", "logloss"):
                assert got[split][metric] == pytest.approx(plain[split][metric], abs=1e-5), (
                    split,
                    metric,
                )
        np.testing.assert_allclose(np.load(run / "predictions.npz")["logits"], logits, atol=1e-4)
        assert got["test"]["auc"] > 0.55  # it learned something in 12 steps


def test_a_sharded_run_limited_to_its_first_test_batches_records_a_partial_test(tmp_path):
    """``trainer.limit_test_batches=1`` on two ranks: the record says which share of the test
    rows was scored, and predictions.npz holds those rows, whose AUC is the recorded one."""
    needs_torchrec()
    from torchmetrics.functional.classification import binary_auroc

    run = tmp_path / "partial"
    args = ["trainer=torchrec", "trainer.devices=2", "eval_batch_size=16"]
    recbench(*SMALL, *args, "trainer.limit_test_batches=1", f"hydra.run.dir={run}", cwd=tmp_path)
    got = json.loads((run / "metrics.json").read_text())
    coverage = got["test_coverage"]
    assert coverage["tested"] == 32 and coverage["of"] > 32 and coverage["partial"]
    saved = np.load(run / "predictions.npz")
    assert len(saved["logits"]) == len(saved["label"]) == 32
    auc = binary_auroc(torch.from_numpy(saved["logits"]), torch.from_numpy(saved["label"]).long())
    assert float(auc) == pytest.approx(got["test"]["auc"], abs=1e-5)
