"""DRN's exploration (Zheng et al., WWW 2018, §4.4): Dueling Bandit Gradient Descent's random
perturbation and update of a network, and probabilistic interleaving (Hofmann et al., CIKM 2011)
of the current and the explore network's lists; and ε-greedy, the exploration it is compared to.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn


def interleave_probs(n: int, tau: float) -> np.ndarray:
    """Probabilistic interleaving's distribution over a ranking of ``n``: rank r (1-based) has
    probability ∝ 1 / r^τ."""
    w = (np.arange(n) + 1.0) ** -tau
    return w / w.sum()


@functools.lru_cache(maxsize=16)
def _log_interleave_probs(n: int, tau: float) -> np.ndarray:
    out = np.log(interleave_probs(n, tau))
    out.flags.writeable = False
    return out


def interleave(
    rank_a: np.ndarray, rank_b: np.ndarray, k: int, tau: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilistic interleaving of two rankings of the same pool into a list of ``k``.

    For each slot a fair coin picks list a or b; the item is drawn from that list's
    ``1 / r^τ`` distribution renormalised over the items not yet placed. Returns the list and,
    per slot, which list placed it (0: a, 1: b).
    """
    n = len(rank_a)
    logp = np.empty((2, n))
    base = _log_interleave_probs(n, tau)
    logp[0, rank_a] = base  # log probability of each pool index under list a, then b
    logp[1, rank_b] = base
    u = rng.random(k * (n + 1))
    who = (u[:k] < 0.5).astype(np.int64)
    # a draw ∝ p over the unplaced items is the argmax of log p + Gumbel noise over them
    keys = logp[who] - np.log(-np.log(u[k:].reshape(k, n)))
    out = np.empty(k, np.int64)
    for j in range(k):
        pick = int(keys[j].argmax())
        out[j] = pick
        keys[j + 1 :, pick] = -np.inf
    return out, who


def egreedy(shown: np.ndarray, n: int, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """ε-greedy over a ranked list ``shown`` from a pool of ``n``: each slot in turn, with
    probability ``epsilon``, shows a candidate drawn uniformly from those not in the slots before
    it; a draw already further down the list swaps into the slot, so the list stays distinct."""
    out = shown.copy()
    for j in range(len(out)):
        if rng.random() < epsilon:
            rest = np.setdiff1d(np.arange(n), out[:j])
            pick = int(rng.choice(rest))
            if pick in out[j:]:
                out[j + np.flatnonzero(out[j:] == pick)[0]] = out[j]
            out[j] = pick
    return out


@torch.no_grad()
def dbgd_perturbation(
    net: nn.Module | Sequence[Tensor], alpha: float, gen: torch.Generator
) -> list[Tensor]:
    """``ΔW = α · rand(-1, 1) · W`` for every parameter of ``net`` (a module, or its parameters
    in order), one draw for all of them."""
    params = list(net.parameters()) if isinstance(net, nn.Module) else list(net)
    u = torch.rand(sum(p.numel() for p in params), generator=gen).mul_(2 * alpha).sub_(alpha)
    return [d.view_as(p) * p for d, p in zip(u.split([p.numel() for p in params]), params)]


@torch.no_grad()
def dbgd_update(
    net: nn.Module | Sequence[Tensor], delta: Sequence[Tensor], eta: float, won: bool
) -> None:
    """``W ← W + η ΔW`` when the explore network won, else nothing."""
    if won:
        params = net.parameters() if isinstance(net, nn.Module) else net
        for p, d in zip(params, delta):
            p.add_(eta * d)


__all__ = ["dbgd_perturbation", "dbgd_update", "egreedy", "interleave", "interleave_probs"]
