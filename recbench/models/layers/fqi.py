"""A linear part of DRN's future value, fitted by fitted Q iteration (Ernst et al., JMLR 2005):
at each major update, the ridge regression of the held lists' future targets (the double-DQN
target beyond the list's clicks) on the lists' features. Each candidate's share of a list's
linear future value is ``θ_f · f(s, a) / K``, ``f`` an intercept, the candidate's columns the
future network reads and the user's activeness, so a list's value is ``θ_f`` times the mean of
its items' ``f``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from recbench.errors import ConfigError
from recbench.models.layers.replay import Replay


def check_fqi(lists: int, ridge: float) -> None:
    """``model.future_wide_lists`` and ``model.future_wide_ridge``, or a ``ConfigError``."""
    if lists < 1 or ridge <= 0.0:
        raise ConfigError(
            f"model.future_wide_lists={lists} must be >= 1 and model.future_wide_ridge={ridge} "
            "> 0 (the ridge's λ): the fit needs lists to fit on and a positive penalty"
        )


def future_features(state, actions, n_cols: int, ctx: int):
    """Per candidate: 1, its last ``n_cols`` action columns (DRN's user–item features, or all of
    them) and the user's activeness (``state[ctx]``). One request, (Ds,) and (N, Da) →
    (N, 2 + n_cols); or a batch, (R, Ds) and (R, N, Da) → (R, N, 2 + n_cols); numpy arrays or
    torch tensors alike."""
    cols = actions[..., -n_cols:]
    one = cols[..., :1] * 0 + 1
    cat = np.concatenate if isinstance(cols, np.ndarray) else torch.cat
    return cat([one, cols, one * state[..., ctx, None, None]], -1)


def ridge_fit(phi: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    """``(ΦᵀΦ + λ diag(0, 1, …, 1))⁻¹ Φᵀ y``: a ridge on every coefficient but the intercept
    (``phi[:, 0]`` = 1)."""
    phi, y = np.asarray(phi, np.float64), np.asarray(y, np.float64)
    pen = np.full(phi.shape[1], float(ridge))
    pen[0] = 0.0
    return np.linalg.solve(phi.T @ phi + np.diag(pen), phi.T @ y)


def fit_future_linear(
    replay: Replay,
    target: Callable[[dict[str, Tensor]], Tensor],
    k: int,
    n_cols: int,
    ctx: int,
    n_lists: int,
    ridge: float,
    min_lists: int = 50,
) -> np.ndarray | None:
    """``θ_f`` from the last ``n_lists`` held lists (None below ``min_lists``): their future
    targets ``target(batch)`` (one per list) regressed on the mean of their items' features."""
    n = min(min(replay.n_tr, replay.tcap) // k, n_lists)
    if n < min_lists:
        return None
    lists = replay.n_tr // k - n + np.arange(n)
    batch = replay.batch(replay.valid((lists[:, None] * k + np.arange(k)).reshape(-1)))
    with torch.no_grad():
        y = target(batch)
        f = future_features(batch["state"], batch["actions"], n_cols, ctx)
        phi = f[batch["inv"], batch["pos"]].view(len(y), k, -1).mean(1)
    return ridge_fit(phi.numpy(), y.numpy(), ridge)


__all__ = ["fit_future_linear", "future_features", "ridge_fit"]
