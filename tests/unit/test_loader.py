import pytest
import torch

from recbench.data.loader import BatchLoader


def _tensors(n):
    return {"row": torch.arange(n), "x": torch.randn(n, 3), "label": torch.zeros(n)}


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 7, 1001])
def test_evaluation_covers_every_row_exactly_once(world, n):
    seen = []
    for rank in range(world):
        loader = BatchLoader(_tensors(n), batch_size=64, rank=rank, world_size=world)
        batches = list(loader)
        assert len(batches) == len(loader)
        seen += [b["row"] for b in batches]
    rows = torch.cat(seen).sort().values
    assert torch.equal(rows, torch.arange(n))


def test_batches_are_rows_gathered_by_one_index():
    t = _tensors(500)
    loader = BatchLoader(t, batch_size=128, shuffle=True, seed=5)
    for b in loader:
        assert torch.equal(b["x"], t["x"][b["row"]])


def test_training_permutation_seeded_by_seed_and_epoch_and_shared_by_ranks():
    n = 1001
    a = BatchLoader(_tensors(n), 100, shuffle=True, seed=1)
    b = BatchLoader(_tensors(n), 100, shuffle=True, seed=1)
    e0 = torch.cat([x["row"] for x in a])
    assert torch.equal(e0, torch.cat([x["row"] for x in b]))
    e1 = torch.cat([x["row"] for x in a])  # the next epoch draws a new order
    assert not torch.equal(e0, e1)
    assert torch.equal(e0.sort().values, torch.arange(n))
    c = BatchLoader(_tensors(n), 100, shuffle=True, seed=2)
    assert not torch.equal(e0, torch.cat([x["row"] for x in c]))
    # two ranks: disjoint halves of the same permutation, same step count (one row wrapped)
    ranks = [
        BatchLoader(_tensors(n), 100, shuffle=True, seed=1, rank=r, world_size=2) for r in range(2)
    ]
    parts = [torch.cat([x["row"] for x in r]) for r in ranks]
    assert len(ranks[0]) == len(ranks[1])
    assert len(parts[0]) == len(parts[1]) == 501
    interleaved = torch.stack([parts[0], parts[1]], 1).flatten()[:n]
    assert torch.equal(interleaved, e0)


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="differ in length"):
        BatchLoader({"a": torch.zeros(3), "b": torch.zeros(4)}, 2)
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(_tensors(3), 0)
