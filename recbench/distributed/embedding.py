"""``FeatureEmbedding``'s tables under TorchRec: one ``EmbeddingBagConfig`` per sparse or multi
field in an ``EmbeddingBagCollection`` built on the meta device, sharded by
``DistributedModelParallel`` (table-wise or row-wise); the rest of the model is data parallel.

A sparse field is a bag of one id pooled by sum (its row); a multi field is a bag of its
non-padding ids pooled by mean (0 for an empty bag), which is ``FeatureEmbedding.pooled``. Dense
fields keep their per-field vector, a dense parameter. The sharded tables are trained by
FBGEMM's optimizer fused into the backward pass (the only kernel TorchRec offers sharded tables):
Adam there updates only the rows a batch touched, where torch's Adam on a dense table also moves
untouched rows by their momentum; SGD is the same update either way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from recbench.distributed.settings import SHARDINGS
from recbench.errors import ConfigError
from recbench.models.layers.embedding import FeatureEmbedding

# FBGEMM's table-batched kernels need rows whose width is a multiple of 4: narrower tables (the
# first-order weights, width 1) are stored zero-padded and read back at their own width
ROW_ALIGN = 4
INSTALL = (
    "pip install 'recbench[torchrec]' (needs torch 2.14 with fbgemm-gpu-cpu 1.9.0 installed "
    "--no-deps; the exact commands are in docs/scale.md)"
)


def require_torchrec() -> None:
    """Import TorchRec or say how to install it."""
    try:
        import torchrec  # noqa: F401
        from torchrec.distributed.model_parallel import DistributedModelParallel  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: an FBGEMM library that does not load
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(
            f"trainer=torchrec needs TorchRec and FBGEMM, which do not import here "
            f"({type(exc).__name__}: {first[:200]}): {INSTALL}"
        ) from exc


def _table_name(i: int, field: str) -> str:
    return f"f{i}_{re.sub(r'[^0-9A-Za-z_]', '_', field)}"  # a module key: no dots


class ShardedFeatureEmbedding(nn.Module):
    """What ``FeatureEmbedding(schema, dim)(batch)`` computes, from a TorchRec
    ``EmbeddingBagCollection`` (on the meta device until ``DistributedModelParallel`` shards it).

    Built from a ``FeatureEmbedding``: its dense-field vectors are kept as they are and its table
    rows are remembered until ``copy_initial_rows`` writes them into the shards, so a sharded
    model starts from the same weights as the plain one of the same seed. Single-row lookups
    (``lookup``, ``pooled``, ``items``: behaviour histories) are not served.
    """

    def __init__(self, plain: FeatureEmbedding) -> None:
        super().__init__()
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType

        schema = plain.schema
        self.schema = schema
        self.dim = plain.dim
        self.width = math.ceil(plain.dim / ROW_ALIGN) * ROW_ALIGN
        self.sparse_names = [f.name for f in schema.sparse]
        self.multi_names = [f.name for f in schema.multi]
        self.n_dense = plain.n_dense
        self.dense_weight = plain.dense_weight
        fields = [*schema.sparse, *schema.multi]
        self.keys = [_table_name(i, f.name) for i, f in enumerate(fields)]
        tables = [
            EmbeddingBagConfig(
                name=key,
                embedding_dim=self.width,
                num_embeddings=f.vocab_size,
                feature_names=[key],
                pooling=PoolingType.SUM if f.kind == "sparse" else PoolingType.MEAN,
            )
            for key, f in zip(self.keys, fields)
        ]
        self.ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
        weight = plain.table.weight.detach()
        # not a parameter or buffer: dropped by copy_initial_rows once the shards hold them
        self._initial_rows: dict[str, Tensor] | None = {
            key: weight[plain.offset_of[f.name] : plain.offset_of[f.name] + f.vocab_size]
            for key, f in zip(self.keys, fields)
        }

    @property
    def num_fields(self) -> int:
        return len(self.keys) + self.n_dense

    @property
    def rows(self) -> int:
        """Rows of every table together (the logical table size, before padding)."""
        return sum(f.vocab_size for f in (*self.schema.sparse, *self.schema.multi))

    def features(self, batch: Mapping[str, Tensor]) -> Any:
        """The batch's sparse and multi ids as a ``KeyedJaggedTensor`` (field-major bags)."""
        from torchrec import KeyedJaggedTensor

        values, lengths = [], []
        if self.sparse_names:
            sparse = batch["sparse"].long()  # (B, S): one id per bag
            values.append(sparse.t().reshape(-1))
            lengths.append(torch.ones(sparse.numel(), dtype=torch.long, device=sparse.device))
        for name in self.multi_names:
            ids = batch[name].long()  # (B, L), 0 = padding
            keep = ids > 0
            values.append(ids[keep])
            lengths.append(keep.sum(1))
        return KeyedJaggedTensor(
            keys=self.keys, values=torch.cat(values), lengths=torch.cat(lengths)
        )

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        parts = []
        if self.keys:
            pooled = self.ebc(self.features(batch)).to_dict()  # key → (B, width)
            parts.append(torch.stack([pooled[k] for k in self.keys], 1)[..., : self.dim])
        if self.n_dense:
            parts.append(batch["dense"].unsqueeze(-1) * self.dense_weight)  # (B, Dn, D)
        return torch.cat(parts, dim=1)

    def _single_rows(self, *args: Any, **kwargs: Any) -> Tensor:
        raise ConfigError(
            "this model looks up single rows of the embedding table (behaviour histories or "
            "item vectors), which TorchRec's pooled tables do not serve: trainer=torchrec trains "
            f"models that embed the fields of a row only ({', '.join(SERVED)})"
        )

    lookup = pooled = items = _single_rows


# CTR models whose tables are only read through FeatureEmbedding.forward
SERVED = (
    "lr",
    "fm",
    "mlp",
    "deep_crossing",
    "pnn",
    "wide_deep",
    "wide_only",
    "dcn",
    "dcn_v2",
    "deepfm",
    "afm",
    "nfm",
    "xdeepfm",
    "autoint",
)


class _Probe(FeatureEmbedding):
    """A ``FeatureEmbedding`` that records every use of its table outside ``forward``."""

    uses: set[str]
    in_forward: bool

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        self.in_forward = True
        try:
            return super().forward(batch)
        finally:
            self.in_forward = False

    def __getattr__(self, name: str) -> Any:
        if name == "table" and not self.__dict__.get("in_forward", False):
            self.__dict__["uses"].add("table")
        return super().__getattr__(name)

    def lookup(self, field: str, ids: Tensor) -> Tensor:
        if not self.in_forward:
            self.uses.add("lookup")
        return super().lookup(field, ids)

    def items(self, ids: Tensor, attributes: Any = None) -> Tensor:
        self.uses.add("items")
        return super().items(ids, attributes)


def check_pooled_only(model: nn.Module, sample: Mapping[str, Tensor], name: str) -> None:
    """Refuse a model that reads its ``FeatureEmbedding`` other than through ``forward``, found
    by running it once, in training and in evaluation mode, on ``sample``."""
    tables = [m for m in model.modules() if isinstance(m, FeatureEmbedding)]
    if not tables:
        raise ConfigError(
            f"model={name} has no FeatureEmbedding table to shard: trainer=torchrec trains "
            f"{', '.join(SERVED)}"
        )
    classes = [type(m) for m in tables]
    uses: set[str] = set()
    try:
        for m in tables:
            m.__class__ = _Probe
            m.__dict__.update(uses=uses, in_forward=False)
        with torch.no_grad(), torch.random.fork_rng():
            for training in (True, False):
                model.train(training)
                model(sample)
    finally:
        for m, cls in zip(tables, classes):
            m.__class__ = cls
            for key in ("uses", "in_forward"):
                m.__dict__.pop(key, None)
        model.train(True)
    if uses:
        raise ConfigError(
            f"model={name} reads its embedding table other than as pooled fields "
            f"({', '.join(sorted(uses))}: behaviour histories or item vectors), which TorchRec's "
            f"pooled tables do not serve; trainer=torchrec trains {', '.join(SERVED)}"
        )


def shard_feature_embeddings(model: nn.Module) -> list[tuple[str, ShardedFeatureEmbedding]]:
    """Replace every ``FeatureEmbedding`` in ``model`` by a ``ShardedFeatureEmbedding`` holding
    its weights; returns (module path, new module) pairs."""
    done = []
    for path, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is FeatureEmbedding:
                sharded = ShardedFeatureEmbedding(child)
                setattr(module, child_name, sharded)
                done.append((f"{path}.{child_name}" if path else child_name, sharded))
    return done


TABLE_OPTIMIZERS = ("auto", "sgd", "adagrad", "rowwise_adagrad", "adam")
# FBGEMM's CPU kernels train sharded tables with these only (no Adam)
CPU_TABLE_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad")


def fused_params(
    optimizer: Mapping[str, Any],
    table_optimizer: str = "auto",
    table_lr: float | None = None,
    device_type: str = "cpu",
) -> dict[str, Any]:
    """FBGEMM's fused optimizer for the sharded tables.

    ``table_optimizer=auto``: the fused form of the run's ``optimizer`` config (torch.optim.Adam,
    AdamW, SGD or Adagrad, with its learning rate, betas, eps and weight decay). Otherwise that
    optimizer (``sgd``, ``adagrad``, ``rowwise_adagrad``: one accumulator per row, ``adam``)
    with learning rate ``table_lr`` (default: ``optimizer.lr``) and FBGEMM's defaults.
    """
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import WeightDecayMode

    target = str(optimizer.get("_target_", ""))
    kw = {k: v for k, v in optimizer.items() if not str(k).startswith("_")}
    for k in ("fused", "foreach", "capturable", "differentiable", "maximize"):
        kw.pop(k, None)  # how torch runs the dense step: no meaning for the fused tables
    lr = float(table_lr if table_lr is not None else kw.get("lr", 1e-3))
    named = {
        "sgd": EmbOptimType.EXACT_SGD,
        "adagrad": EmbOptimType.EXACT_ADAGRAD,
        "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        "adam": EmbOptimType.ADAM,
    }
    if table_optimizer not in TABLE_OPTIMIZERS:
        raise ConfigError(
            f"trainer.table_optimizer={table_optimizer!r} is not one of "
            f"{', '.join(TABLE_OPTIMIZERS)}"
        )
    cpu_fix = (
        "FBGEMM's CPU kernels train sharded tables with sgd, adagrad or rowwise_adagrad only: "
        "set trainer.table_optimizer=adagrad (and trainer.table_lr, e.g. 0.05), or run on GPUs"
    )
    if table_optimizer != "auto":
        if device_type == "cpu" and table_optimizer not in CPU_TABLE_OPTIMIZERS:
            raise ConfigError(f"trainer.table_optimizer={table_optimizer}: {cpu_fix}")
        return {"optimizer": named[table_optimizer], "learning_rate": lr}
    kinds = {
        "torch.optim.Adam": (EmbOptimType.ADAM, WeightDecayMode.L2),
        "torch.optim.AdamW": (EmbOptimType.ADAM, WeightDecayMode.DECOUPLE),
        "torch.optim.SGD": (EmbOptimType.EXACT_SGD, WeightDecayMode.L2),
        "torch.optim.Adagrad": (EmbOptimType.EXACT_ADAGRAD, WeightDecayMode.L2),
    }
    if target not in kinds:
        raise ConfigError(
            f"optimizer._target_={target} has no fused form for the sharded tables (FBGEMM "
            "trains them inside the backward pass): set trainer.table_optimizer to one of "
            f"{', '.join(TABLE_OPTIMIZERS[1:])}"
        )
    kind, decay_mode = kinds[target]
    if device_type == "cpu" and kind is EmbOptimType.ADAM:
        raise ConfigError(
            f"optimizer={target.split('.')[-1]} with trainer=torchrec on CPU: {cpu_fix}"
        )
    out: dict[str, Any] = {"optimizer": kind, "learning_rate": lr}
    kw.pop("lr", None)
    decay = float(kw.pop("weight_decay", 0.0) or 0.0)
    if decay:
        out.update(weight_decay=decay, weight_decay_mode=decay_mode)
    if kind is EmbOptimType.ADAM:
        beta1, beta2 = kw.pop("betas", (0.9, 0.999))
        out.update(beta1=float(beta1), beta2=float(beta2), eps=float(kw.pop("eps", 1e-8)))
    elif kind is EmbOptimType.EXACT_ADAGRAD:
        out["eps"] = float(kw.pop("eps", 1e-10))
    unfused = {k: v for k, v in kw.items() if v not in (None, False, 0, 0.0)}
    if unfused:
        raise ConfigError(
            f"optimizer keys {sorted(unfused)} have no fused form for the sharded tables: leave "
            "them unset, or set trainer.table_optimizer"
        )
    return out


def sharding_plan(
    model: nn.Module,
    sharded: list[tuple[str, ShardedFeatureEmbedding]],
    sharding: str,
    sharder: Any,
    device: torch.device,
) -> Any:
    """TorchRec's plan for every table of ``sharded``, all ``sharding`` (``table_wise`` or
    ``row_wise``), from ``EmbeddingShardingPlanner`` with that constraint. TorchRec's planner
    offers row-wise sharding on CUDA only; on CPU the row-wise plan is built directly (every
    table split by rows across all ranks), which its CPU kernels and gloo do run."""
    import torch.distributed as dist
    from torchrec.distributed.planner import (
        EmbeddingShardingPlanner,
        ParameterConstraints,
        Topology,
    )
    from torchrec.distributed.sharding_plan import construct_module_sharding_plan, row_wise
    from torchrec.distributed.types import ShardingPlan, ShardingType

    if sharding not in SHARDINGS:
        raise ConfigError(f"trainer.sharding={sharding!r} is not one of {', '.join(SHARDINGS)}")
    world = dist.get_world_size()
    if sharding == "row_wise" and device.type == "cpu":
        return ShardingPlan(
            {
                f"{path}.ebc": construct_module_sharding_plan(
                    module.ebc,
                    {key: row_wise(compute_kernel="fused") for key in module.keys},
                    sharder=sharder,
                    local_size=world,
                    world_size=world,
                    device_type="cpu",
                )
                for path, module in sharded
            }
        )
    kind = ShardingType.TABLE_WISE if sharding == "table_wise" else ShardingType.ROW_WISE
    constraints = {
        key: ParameterConstraints(sharding_types=[kind.value])
        for _, module in sharded
        for key in module.keys
    }
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world, compute_device=device.type),
        constraints=constraints,
    )
    return planner.collective_plan(model, [sharder], dist.GroupMember.WORLD)


def distribute(
    model: nn.Module,
    sharded: list[tuple[str, ShardedFeatureEmbedding]],
    sharding: str,
    table_optimizer: Mapping[str, Any],
    device: torch.device,
) -> nn.Module:
    """``model`` under ``DistributedModelParallel``: its ``sharded`` tables split across the
    process group's ranks as ``sharding`` says and trained by ``table_optimizer`` (from
    ``fused_params``), every other parameter replicated under DDP. The plain weights are then
    copied in."""
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel

    sharder = EmbeddingBagCollectionSharder(fused_params=dict(table_optimizer))
    plan = sharding_plan(model, sharded, sharding, sharder, device)
    dmp = DistributedModelParallel(model, device=device, plan=plan, sharders=[sharder])
    copy_initial_rows(dmp, sharded)
    return dmp


def _table_tensors(
    dmp: nn.Module, sharded: list[tuple[str, ShardedFeatureEmbedding]]
) -> Iterator[tuple[ShardedFeatureEmbedding, str, Any]]:
    """(module, table key, the table's ShardedTensor) for every sharded table, from the state
    dict (whose local shards are views of the weights the kernels train)."""
    state = dmp.state_dict()
    for path, module in sharded:
        for key in module.keys:
            yield module, key, state[f"{path}.ebc.embedding_bags.{key}.weight"]


@torch.no_grad()
def copy_initial_rows(dmp: nn.Module, sharded: list[tuple[str, ShardedFeatureEmbedding]]) -> None:
    """Write each table's remembered rows into this rank's shards (padding columns zero)."""
    for module, key, table in _table_tensors(dmp, sharded):
        rows = module._initial_rows[key]
        for shard in table.local_shards():
            (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
            block = torch.zeros(nr, nc, dtype=shard.tensor.dtype)
            src = rows[r0 : r0 + nr, c0 : min(c0 + nc, module.dim)]
            block[: src.shape[0], : src.shape[1]] = src
            shard.tensor.copy_(block.to(shard.tensor.device))
    for _, module in sharded:
        module._initial_rows = None


def local_state(dmp: nn.Module) -> dict[str, Tensor | list[Tensor]]:
    """Copies of this rank's weights: every local shard of the sharded tables, every dense
    tensor of the state dict."""
    out: dict[str, Tensor | list[Tensor]] = {}
    for name, value in dmp.state_dict().items():
        if hasattr(value, "local_shards"):
            out[name] = [s.tensor.detach().clone() for s in value.local_shards()]
        else:
            out[name] = value.detach().clone()
    return out


@torch.no_grad()
def load_local_state(dmp: nn.Module, saved: Mapping[str, Tensor | list[Tensor]]) -> None:
    """Write ``local_state``'s copies back into this rank's weights."""
    for name, value in dmp.state_dict().items():
        if hasattr(value, "local_shards"):
            for shard, src in zip(value.local_shards(), saved[name]):
                shard.tensor.copy_(src)
        else:
            value.copy_(saved[name])


def full_table(dmp: nn.Module, module: ShardedFeatureEmbedding, key: str, path: str) -> Tensor:
    """One table gathered whole on every rank, at its own width (for tests and inspection:
    it costs the table's full size on each rank)."""
    import torch.distributed as dist

    table = dmp.state_dict()[f"{path}.ebc.embedding_bags.{key}.weight"]
    rows, width = table.size()
    out = torch.zeros(rows, width)
    for shard in table.local_shards():
        (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
        out[r0 : r0 + nr, c0 : c0 + nc] = shard.tensor.detach().float().cpu()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(out)  # every cell lives on exactly one rank
    return out[:, : module.dim]


__all__ = [
    "INSTALL",
    "SERVED",
    "SHARDINGS",
    "ShardedFeatureEmbedding",
    "check_pooled_only",
    "distribute",
    "full_table",
    "fused_params",
    "load_local_state",
    "local_state",
    "require_torchrec",
    "shard_feature_embeddings",
]
