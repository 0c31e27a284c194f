"""Small schemas and random batches for unit tests of layers and models; an RL episode's
trajectory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from recbench.data.schema import FeatureSchema, Field


def toy_schema(n_items: int = 30, hist_len: int = 6, with_history: bool = True) -> FeatureSchema:
    fields = [
        Field("user_id", "sparse", vocab_size=20),
        Field("item_id", "sparse", vocab_size=n_items),
        Field("gender", "sparse", vocab_size=4),
        Field("age", "sparse", vocab_size=9),
        Field("genres", "multi", vocab_size=8, max_len=3),
        Field("price", "dense"),
    ]
    if with_history:
        fields += [
            Field("hist_item_id", "sequence", max_len=hist_len, shares="item_id"),
            Field("hist_item_id_neg", "sequence", max_len=hist_len, shares="item_id"),
        ]
    g = torch.Generator().manual_seed(7)
    genres = torch.randint(2, 8, (n_items, 3), generator=g)
    genres[:, 2] = 0  # two genres per item, right-padded
    genres[:2] = 0  # padding and OOV items have no genres
    return FeatureSchema(tuple(fields), item_attributes={"genres": genres})


def random_batch(schema: FeatureSchema, batch_size: int = 16, seed: int = 0) -> dict:
    """A batch that follows the schema's layout; histories have random true lengths (≥ 1)."""
    g = torch.Generator().manual_seed(seed)
    b: dict[str, torch.Tensor] = {}
    if schema.sparse:
        b["sparse"] = torch.stack(
            [torch.randint(1, f.vocab_size, (batch_size,), generator=g) for f in schema.sparse], 1
        )
    if schema.dense:
        b["dense"] = torch.randn(batch_size, len(schema.dense), generator=g)
    for f in schema.multi:
        if f.name in schema.item_attributes:
            items = b["sparse"][:, schema.sparse_index(schema.item)]
            b[f.name] = schema.item_attributes[f.name][items]
        else:
            b[f.name] = torch.randint(0, f.vocab_size, (batch_size, f.max_len), generator=g)
    seqs = schema.sequence
    if seqs:
        lengths = torch.randint(1, seqs[0].max_len + 1, (batch_size,), generator=g)
        for f in seqs:
            vocab = schema[f.shares].vocab_size
            ids = torch.randint(2, vocab, (batch_size, f.max_len), generator=g)
            mask = torch.arange(f.max_len)[None, :] < lengths[:, None]
            b[f.name] = ids * mask
    b["label"] = torch.randint(0, 2, (batch_size,), generator=g).float()
    b["group"] = torch.randint(0, 5, (batch_size,), generator=g)
    return b


def rl_trajectory(
    policy: Any, env: Any, seed: int, stop: Callable[[Any], bool] | None = None
) -> list[tuple]:
    """(user, shown, clicks) of each request of one episode of ``env`` (reset with ``seed``)
    under ``policy``, acting and learning, to the horizon or until ``stop(policy)`` holds."""
    obs, _ = env.reset(seed=seed)
    out, done = [], False
    while not done:
        shown = policy.act(obs)
        nxt, _, _, done, info = env.step(shown)
        policy.observe(obs, info["shown"], info)
        out.append((info["user"], tuple(info["shown"]), tuple(info["clicks"])))
        obs = nxt
        if stop is not None and stop(policy):
            break
    return out


def train_config(*overrides: str) -> Any:
    """The composed ``train`` config with ``overrides``, as ``recbench train`` would see it."""
    from hydra import compose, initialize_config_dir

    from recbench.cli import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def table_config(
    root: Any,
    task: str | None,
    model: str | None,
    *extra: str,
    columns: dict[str, str] | None = None,
) -> Any:
    """The train config of ``task`` and ``model`` (None: the train config's default, which
    ``extra`` may set) on ``root``/log.csv through ``dataset=table``, its user and item columns
    ``u`` and ``i`` unless ``columns`` names the roles (``extra``: more overrides)."""
    roles = columns or {"user": "u", "item": "i"}
    return train_config(
        "dataset=table",
        f"dataset.root={root}",
        "dataset.adapter.path=log.csv",
        *(f"dataset.adapter.columns.{role}={col}" for role, col in roles.items()),
        *([f"task={task}"] if task else []),
        *([f"model={model}"] if model else []),
        *extra,
    )
