"""NeuMF (He et al., WWW 2017, eq. 11-12): GMF and the MLP tower side by side, each with its own
embeddings, fused by one output layer: ŷ_ui = σ(hᵀ[p^G_u ⊙ q^G_i ; φ_L([p^M_u; q^M_i])] + b).

Pretraining as in the paper (``pretrained.gmf`` / ``pretrained.mlp``: run directories of a
trained GMF and MLP on the same data): their embeddings and tower are copied, and the output
layer becomes h = [α h_GMF ; (1 − α) h_MLP], b = α b_GMF + (1 − α) b_MLP.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from recbench.data.schema import InteractionSchema
from recbench.errors import ConfigError
from recbench.models.layers.cf import ALL, PairTower, id_embedding, rows_of
from recbench.models.layers.embedding import gather_rows


class NeuMF(nn.Module):
    tasks: ClassVar[tuple[str, ...]] = ("topk",)

    def __init__(
        self,
        schema: InteractionSchema,
        dim: int = 8,
        layers: Sequence[int] = (64, 32, 16, 8),
        init_std: float = 0.01,
        pretrained: Mapping[str, Any] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        users, items = schema.num_users + 1, schema.num_items + 1
        self.gmf_user = id_embedding(users, dim, init_std)
        self.gmf_item = id_embedding(items, dim, init_std)
        self.tower = PairTower(layers, dropout)
        d = self.tower.input_dim // 2
        self.mlp_user = id_embedding(users, d, init_std)
        self.mlp_item = id_embedding(items, d, init_std)
        self.out = nn.Linear(dim + self.tower.output_dim, 1)
        pretrained = dict(pretrained or {})
        gmf, mlp = pretrained.get("gmf"), pretrained.get("mlp")
        if gmf or mlp or pretrained.get("from_models"):
            if not (gmf and mlp):
                raise ConfigError(
                    "NeuMF pretraining needs both model.pretrained.gmf and model.pretrained.mlp "
                    "(run directories of a gmf and an ncf_mlp run on the same data); "
                    "`recbench compare` trains and fills them in, or use model=neumf"
                )
            self.load_parts(
                run_state(gmf), run_state(mlp), float(pretrained.get("alpha", 0.5)), (gmf, mlp)
            )

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        u, i = batch["user"], batch["item"]
        # index_select rows: on CPU its backward is several times faster than nn.Embedding's
        g = gather_rows(self.gmf_user.weight, u) * gather_rows(self.gmf_item.weight, i)
        m = self.tower(gather_rows(self.mlp_user.weight, u), gather_rows(self.mlp_item.weight, i))
        return self.out(torch.cat([g, m], dim=-1)).squeeze(-1)

    def score_items(self, batch: Mapping[str, Tensor], items: slice | Tensor = ALL) -> Tensor:
        """(B, len(items)) for the item codes ``items`` (a slice or a 1-D tensor of codes): the
        output layer is linear, so the GMF part is one product and the MLP part the tower's
        blocked path. A fresh tensor."""
        u = batch["user"]
        d = self.gmf_user.embedding_dim
        h = self.out.weight[0]
        gmf = (self.gmf_user(u) * h[:d]) @ rows_of(self.gmf_item.weight, items).T
        mlp = self.tower.score_all(self.mlp_user(u), rows_of(self.mlp_item.weight, items), h[d:])
        return gmf + mlp + self.out.bias

    def score_all(self, batch: Mapping[str, Tensor]) -> Tensor:
        """(B, num_items + 1): every item code; column 0 is padding."""
        return self.score_items(batch)

    @torch.no_grad()
    def load_parts(
        self,
        gmf: dict[str, Tensor],
        mlp: dict[str, Tensor],
        alpha: float,
        runs: tuple[str | Path, str | Path] = ("gmf", "mlp"),
    ) -> None:
        """Copy a GMF's and an NCF MLP's weights (state dicts) in; α-weighted output layer.
        ``runs``: where each came from, for a message."""
        parts = {"gmf": (gmf, runs[0], "gmf"), "mlp": (mlp, runs[1], "ncf_mlp")}
        pairs = {  # NeuMF's weight → (the part it comes from, that part's weight)
            "gmf_user.weight": ("gmf", "user.weight"),
            "gmf_item.weight": ("gmf", "item.weight"),
            "mlp_user.weight": ("mlp", "user.weight"),
            "mlp_item.weight": ("mlp", "item.weight"),
            **{f"tower.{k}": ("mlp", f"tower.{k}") for k in self.tower.state_dict()},
        }
        for part, (src, run, model) in parts.items():
            needs = [k for p, k in pairs.values() if p == part] + ["out.weight", "out.bias"]
            missing = [k for k in needs if k not in src]
            if missing:
                held = ", ".join(sorted(src)[:4]) + (", ..." if len(src) > 4 else "")
                raise ConfigError(
                    f"model.pretrained.{part}={run} is not a run of model={model}: its weights have no "
                    f"{missing[0]!r} (they hold {held}); give the folder of a finished "
                    f"`recbench train task=topk model={model}` run on the same data"
                )
        own = self.state_dict()
        for name, (part, key) in pairs.items():
            src, run = parts[part][0], parts[part][1]
            if src[key].shape != own[name].shape:
                raise ConfigError(
                    f"model.pretrained.{part}={run}: its {key} has shape "
                    f"{tuple(src[key].shape)}, NeuMF's {name} needs {tuple(own[name].shape)}: "
                    "pretrain on the same data with matching model.dim / model.layers"
                )
            own[name].copy_(src[key])
        self.out.weight.copy_(
            torch.cat([alpha * gmf["out.weight"], (1 - alpha) * mlp["out.weight"]], dim=1)
        )
        self.out.bias.copy_(alpha * gmf["out.bias"] + (1 - alpha) * mlp["out.bias"])


def run_state(run_dir: str | Path) -> dict[str, Tensor]:
    """The model weights of a finished run's best checkpoint (``metrics.json`` names it)."""
    path = Path(str(run_dir))
    ckpt = None
    if (path / "metrics.json").exists():
        ckpt = json.loads((path / "metrics.json").read_text()).get("checkpoint")
    if not ckpt:
        found = sorted((path / "checkpoints").glob("best-*.ckpt"))
        ckpt = str(found[-1]) if found else None
    if not ckpt or not Path(ckpt).exists():
        raise ConfigError(
            f"no finished run with a checkpoint at {path}: train it first (recbench compare "
            "trains a pretrained NeuMF's GMF and MLP before it)"
        )
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    out = {}
    for k, v in state.items():
        for prefix in ("model._orig_mod.", "model."):
            if k.startswith(prefix):
                out[k[len(prefix) :]] = v
                break
    return out


__all__ = ["NeuMF", "run_state"]
