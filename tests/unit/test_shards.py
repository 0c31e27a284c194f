"""Column shards: streamed preparation, the memory-mapped loader (epochs, ranks, shuffling), and
its agreement with the in-memory path on a generated Criteo-shaped file."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from recbench.data.loader import BatchLoader
from recbench.data.pipeline import PreparedData, prepare
from recbench.data.shards import ShardedData, ShardLoader, split_of_rows
from recbench.metrics import NO_USER, auc

ROOT = Path(__file__).resolve().parents[2]
ROWS = 3000


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("criteo-gen")
    load_script("make_criteo").write(folder / "train.txt", ROWS, 3, 0.25, 1000, 0.05)
    return folder


def criteo_cfg(root: Path, **over):
    cfg = OmegaConf.load(ROOT / "configs" / "dataset" / "criteo.yaml")
    cfg = OmegaConf.create({"dataset": cfg})
    cfg.dataset.root = str(root)
    cfg.dataset.shards.rows = 700  # several shards per split, a short last one
    cfg.dataset.shards.block_rows = 64
    cfg.dataset.shards.buffer_blocks = 3
    for k, v in over.items():
        OmegaConf.update(cfg, f"dataset.{k}", v)
    return cfg.dataset


@pytest.fixture(scope="module")
def sharded(generated) -> ShardedData:
    data = prepare(criteo_cfg(generated), log=lambda m: None)
    assert isinstance(data, ShardedData)
    return data


def rows_of(batches, cols=("sparse", "dense", "label")) -> list[bytes]:
    """Each row as bytes of its columns: comparable as a multiset."""
    out = []
    for b in batches:
        parts = [b[c].numpy().reshape(len(b["label"]), -1) for c in cols]
        out += [b"|".join(p[i].tobytes() for p in parts) for i in range(len(b["label"]))]
    return out


def test_preparation_writes_several_mmap_shards_and_the_split_is_by_row(sharded):
    train = sharded.splits["train"]
    assert len(train.sizes) >= 3 and max(train.sizes) == 700
    assert sum(sharded.info["rows"].values()) == ROWS
    mm = np.load(train.folder / "sparse-00000.npy", mmap_mode="r")
    assert isinstance(mm, np.memmap) and mm.dtype == np.int32 and mm.shape[1] == 26
    assert [f.name for f in sharded.schema.dense] == [f"I{i}" for i in range(1, 14)]
    assert len(sharded.schema.sparse) == 26
    # split membership depends on the row number alone: chunking cannot move a row
    rows = np.arange(ROWS)
    whole = split_of_rows(rows, 2024, [0.8, 0.1, 0.1])
    pieces = np.concatenate(
        [split_of_rows(r, 2024, [0.8, 0.1, 0.1]) for r in np.array_split(rows, 7)]
    )
    assert (whole == pieces).all()
    assert sharded.info["rows"]["train"] == int((whole == 0).sum())
    assert abs((whole == 0).mean() - 0.8) < 0.03
    assert 0.5 < sharded.info["oracle_auc"]["test"]["oracle_p"] < 1


def test_chunk_size_does_not_change_the_prepared_rows(generated, sharded, tmp_path, monkeypatch):
    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path))
    small = prepare(criteo_cfg(generated, **{"adapter.chunk_mb": 0.0625}), log=lambda m: None)
    assert small.key == sharded.key  # how the file is read is not part of the key
    for s in ("train", "test"):
        for k in ("sparse", "dense", "label"):
            assert np.array_equal(small.splits[s][k].numpy(), sharded.splits[s][k].numpy())


@pytest.mark.parametrize("world", [1, 2, 3])
def test_evaluation_sees_every_row_once_across_ranks(sharded, world):
    split = sharded.splits["val"]
    got = []
    for rank in range(world):
        got += rows_of(ShardLoader(split, 50, rank=rank, world_size=world))
    mem = sharded.to_memory().splits["val"]
    assert Counter(got) == Counter(rows_of([mem]))  # each row exactly once
    assert len(got) == split.n


@pytest.mark.parametrize("world", [1, 2])
def test_training_epoch_covers_every_row_with_equal_steps_per_rank(sharded, world):
    split = sharded.splits["train"]
    loaders = [ShardLoader(split, 100, True, 5, rank=r, world_size=world) for r in range(world)]
    per_rank = [list(ld) for ld in loaders]
    assert len({len(b) for b in per_rank}) == 1  # the same number of steps on every rank
    assert all(len(b) == len(ld) for b, ld in zip(per_rank, loaders, strict=True))
    seen = Counter(r for batches in per_rank for r in rows_of(batches))
    everything = Counter(rows_of([sharded.to_memory().splits["train"]]))
    assert set(seen) == set(everything)  # no row missed
    extra = sum(seen.values()) - split.n
    assert 0 <= extra <= split.block_rows * split.buffer_blocks  # padding only to even out ranks
    if world == 1:
        assert seen == everything  # one rank: exactly once
    # ranks read disjoint blocks: apart from padding, no row on two ranks
    if world == 2:
        a, b = (Counter(rows_of(x)) for x in per_rank)
        assert sum((a & b).values()) <= extra


def test_shuffle_is_deterministic_per_seed_and_epoch_and_mixes_blocks(sharded):
    split = sharded.splits["train"]

    def order(seed, epoch):
        ld = ShardLoader(split, 128, True, seed)
        ld.set_epoch(epoch)
        return torch.cat([b["label"] for b in ld]), torch.cat([b["dense"][:, 0] for b in ld])

    a, b = order(1, 0), order(1, 0)
    assert torch.equal(a[1], b[1])
    assert not torch.equal(order(1, 1)[1], a[1]) and not torch.equal(order(2, 0)[1], a[1])
    natural = torch.from_numpy(split["dense"].numpy()[:, 0])
    assert not torch.equal(a[1], natural)
    # the first batch draws on several blocks, not one block's consecutive rows
    first = ShardLoader(split, 128, True, 1)
    batch = next(iter(first))["dense"][:, 0].numpy()
    pos = [int(np.flatnonzero(natural.numpy() == v)[0]) for v in batch[:40]]
    assert len({p // split.block_rows for p in pos}) >= 2


def test_shard_and_memory_batches_and_auc_agree(sharded):
    mem = sharded.to_memory()
    assert isinstance(mem, PreparedData)
    for s in ("train", "val", "test"):
        got = Counter(rows_of(ShardLoader(sharded.splits[s], 256, shuffle=s == "train", seed=4)))
        ref = Counter(rows_of(BatchLoader(mem.splits[s], 256, shuffle=s == "train", seed=4)))
        assert got == ref, s
    # the same weights score both paths identically, row for row
    from recbench.models import build_model

    torch.manual_seed(0)
    model = build_model(
        OmegaConf.create({"_target_": "recbench.models.deepfm.DeepFM", "embed_dim": 4}),
        sharded.schema,
    ).eval()
    with torch.no_grad():
        shard = [(model(b), b["label"]) for b in ShardLoader(sharded.splits["test"], 300)]
        memory = [(model(b), b["label"]) for b in BatchLoader(mem.splits["test"], 300)]
    s_logits, s_y = (torch.cat(x) for x in zip(*shard, strict=True))
    m_logits, m_y = (torch.cat(x) for x in zip(*memory, strict=True))
    assert torch.equal(s_y, m_y) and torch.allclose(s_logits, m_logits)
    assert auc(s_logits, s_y) == auc(m_logits, m_y)
    groups = torch.cat([b["group"] for b in ShardLoader(sharded.splits["test"], 300)])
    assert bool((groups == NO_USER).all())  # no user ids: GAUC is undefined, not the AUC


def test_selected_columns_and_slices_read_like_tensors(sharded):
    split = sharded.splits["test"].select({"sparse", "label", "group"})
    assert set(split) == {"sparse", "label", "group"}
    edge = split.sizes[0]  # a slice across the first shard boundary
    whole = split["sparse"].numpy()
    assert torch.equal(
        split["sparse"][edge - 3 : edge + 4], torch.from_numpy(whole[edge - 3 : edge + 4])
    )
    assert split["group"][:5].tolist() == [NO_USER] * 5
    with pytest.raises(TypeError):
        split["label"][::2]


def test_an_interrupted_preparation_leaves_no_cache(generated, tmp_path, monkeypatch):
    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path))
    import recbench.data.shards as shards

    def fail(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(shards._ShardWriter, "close", fail)
    with pytest.raises(KeyboardInterrupt):
        prepare(criteo_cfg(generated), log=lambda m: None)
    left = [p.name for p in (tmp_path / "prepared").iterdir() if p.suffix != ".lock"]
    assert not left  # neither cache nor temporary folder
    # an unreadable cache is rebuilt, not trusted
    monkeypatch.undo()
    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path))
    data = prepare(criteo_cfg(generated), log=lambda m: None)
    (data.path / "train" / "label-00000.npy").write_bytes(b"garbage")
    again = prepare(criteo_cfg(generated), log=lambda m: None)
    assert again.splits["train"]["label"].numpy().shape == (data.info["rows"]["train"],)


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: (path / "train" / "label-00000.npy").write_bytes(b""),  # EOFError
        lambda path: (path / "shards.json").write_text("[]"),  # AttributeError
    ],
    ids=["empty-shard", "json-list"],
)
def test_any_unreadable_shard_cache_is_rebuilt(generated, tmp_path, monkeypatch, damage):
    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path))
    data = prepare(criteo_cfg(generated), log=lambda m: None)
    damage(data.path)
    said = []
    again = prepare(criteo_cfg(generated), log=said.append)
    assert any("unreadable" in m for m in said)
    assert again.splits["train"]["label"].numpy().shape == (data.info["rows"]["train"],)


@pytest.mark.parametrize("world", [2, 4])
def test_training_steps_per_epoch_do_not_change_with_the_block_order(sharded, world):
    """Lightning reads a training loader's length once and stops every epoch there: an epoch
    whose block order gave a rank more rows would lose its last batches."""
    split = sharded.splits["train"]
    for rank in range(world):
        loader = ShardLoader(split, 7, shuffle=True, seed=1, rank=rank, world_size=world)
        first = len(loader)
        for epoch in range(8):
            loader.set_epoch(epoch)
            assert len(loader) == first, epoch
            assert sum(1 for _ in loader) == first, epoch


def test_a_training_rank_without_blocks_of_its_own_runs_the_same_steps(sharded):
    """More ranks than blocks (a small file under DDP): a rank that DDP waits on must not run
    out of batches while the others train."""
    split = sharded.splits["train"]
    world = len(split.blocks()) + 2
    loaders = [ShardLoader(split, 50, True, 5, rank=r, world_size=world) for r in range(world)]
    steps = [sum(1 for _ in ld) for ld in loaders]
    assert steps == [len(ld) for ld in loaders]
    assert len(set(steps)) == 1 and steps[0] > 0
