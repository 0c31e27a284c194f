"""DRN's Q-networks (Zheng et al., WWW 2018, §4.2): the dueling network ``Q(s, a) = V(s) +
A(s, a)``, its split into per-item click values and one future value per list, several
networks' snapshots stacked for one acting pass, and the double-DQN target (§4.1, eq. 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recbench.models.layers import MLP


class DuelingQ(nn.Module):
    """``Q(s, a) = V(s) + A(s, a)`` over a pool of candidates.

    state (B, Ds), actions (B, N, Da), items (B, N) codes → Q (B, N). With ``sigmoid`` the
    network is a click probability, ``Q = σ(V + A)``: ``logits`` gives ``V + A`` for a logistic
    loss, ``forward`` and the acting passes the probability.
    """

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        n_items: int,
        item_dim: int = 8,
        hidden: Sequence[int] = (64, 32),
        center_advantage: bool = True,
        sigmoid: bool = False,
    ) -> None:
        super().__init__()
        self.sigmoid = bool(sigmoid)
        self.value = MLP(state_dim, hidden, 1)
        self.item_emb = nn.Embedding(n_items + 1, item_dim, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, std=0.01)
        self.advantage = MLP(state_dim + action_dim + item_dim, hidden, 1)
        self.center_advantage = center_advantage
        # the layers in order, looked up once (a deepcopy maps them to the copy's own)
        self._v_lins = self._linears(self.value)
        self._a_lins = self._linears(self.advantage)

    @staticmethod
    def _linears(mlp: nn.Module) -> list[nn.Linear]:
        return [m for m in mlp.modules() if isinstance(m, nn.Linear)]

    def parts(self, state: Tensor, actions: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        """V (B, 1) and the raw advantage A (B, N).

        The advantage MLP reads [state, action, item embedding]; its first layer is applied by
        input block, so the state's share is computed once per request, not per candidate."""
        v = state
        lins = self._v_lins
        for j, m in enumerate(lins):
            v = F.linear(v, m.weight, m.bias)
            if j < len(lins) - 1:
                v = torch.relu(v)
        first, *rest = self._a_lins
        ds, da = state.shape[-1], actions.shape[-1]
        w = first.weight
        h = F.linear(state, w[:, :ds], first.bias).unsqueeze(1) + F.linear(
            actions, w[:, ds : ds + da]
        )
        if self.item_emb.embedding_dim:  # none (the default): no lookup of empty rows
            h = h + F.linear(self.item_emb(items), w[:, ds + da :])
        for m in rest:
            h = F.linear(torch.relu(h), m.weight, m.bias)
        return v, h.squeeze(-1)

    @torch.no_grad()
    def zero_output(self) -> None:
        """Zero both streams' output layers: the network's Q is 0 until it learns."""
        for lins in (self._v_lins, self._a_lins):
            lins[-1].weight.zero_()
            lins[-1].bias.zero_()

    @property
    def heads(self) -> tuple[DuelingQ, ...]:
        """The networks whose sum is Q (``SplitQ``: two)."""
        return (self,)

    def logits(self, state: Tensor, actions: Tensor, items: Tensor) -> Tensor:
        """``V + A`` (the centred A with ``center_advantage``), before the ``sigmoid`` link."""
        v, a = self.parts(state, actions, items)
        if self.center_advantage:
            a = a - a.mean(dim=1, keepdim=True)
        return v + a

    def forward(self, state: Tensor, actions: Tensor, items: Tensor) -> Tensor:
        z = self.logits(state, actions, items)
        return torch.sigmoid(z) if self.sigmoid else z

    @torch.no_grad()
    def snapshot(self) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        """The weights as numpy arrays for ``act_numpy`` (take a new one after each update)."""
        out = []
        for lins in (self._v_lins, self._a_lins):
            out.append(
                [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) for m in lins]
            )
        out.append([(self.item_emb.weight.detach().numpy().copy(), np.zeros(0))])
        return out

    def act_numpy(self, snap: list, state: np.ndarray, actions: np.ndarray, items: np.ndarray):
        """``forward`` for one request in numpy, (Ds,), (N, Da), (N,) → (N,): the per-request
        path, where torch's call overhead would dominate."""
        return self.act_stacked(stack_snapshots([snap], len(state)), state, actions, items)[0]

    def act_stacked(
        self, stacked: dict, state: np.ndarray, actions: np.ndarray, items: np.ndarray
    ) -> np.ndarray:
        """``forward`` of M networks of this shape (``stack_snapshots``) for one request in one
        pass: (Ds,), (N, Da), (N,) → Q (M, N). The M networks run side by side as one wider
        network (first layers side by side, later ones block-diagonal), so each layer is one
        2-D product however many networks there are."""
        v = state[None, :]
        n_v = len(stacked["value"])
        for j, (w, b) in enumerate(stacked["value"]):
            v = v @ w + b
            if j < n_v - 1:
                np.maximum(v, 0.0, out=v)
        ws, wa, we, b1 = stacked["first"]
        # the first layer by input block: the state's share once, then the pool's rows
        h = actions @ wa  # (N, M·H1)
        if we.shape[0]:  # item embeddings (none by default)
            h = h + stacked["emb"][items] @ we
        h = h + (state @ ws + b1)
        for w, b in stacked["advantage"]:
            np.maximum(h, 0.0, out=h)
            h = h @ w + b
        a = h.T  # (M, N)
        if self.center_advantage:  # the mean, as ndarray.mean computes it, without its wrapper
            a = a - np.add.reduce(a, axis=1, keepdims=True) / a.shape[1]
        q = v.T + a
        if self.sigmoid:  # σ(z) = ½(1 + tanh(z/2)): no overflow warning for large |z|
            q = 0.5 * (1.0 + np.tanh(0.5 * q))
        return q


class SplitQ(nn.Module):
    """Two ``DuelingQ``, ``click`` and ``future``; ``forward`` is each candidate's share of a
    list's value, ``Q_click(s, a) + Q_f(s, a) / k``, what the agent ranks by."""

    def __init__(
        self, click: DuelingQ, future: DuelingQ, k: int, future_cols: int | None = None
    ) -> None:
        super().__init__()
        self.click, self.future, self.k = click, future, k
        # the future network reads the last future_cols action columns (None: all of them)
        self.future_cols = future_cols
        # and features only: an item's embedding, fitted to the few noisy list outcomes the
        # item takes part in, would rank by that noise
        with torch.no_grad():
            future.item_emb.weight.zero_()
        future.item_emb.weight.requires_grad_(False)

    def future_actions(self, actions: Tensor) -> Tensor:
        return actions if self.future_cols is None else actions[..., -self.future_cols :]

    def q_future(self, state: Tensor, actions: Tensor, items: Tensor) -> Tensor:
        return self.future(state, self.future_actions(actions), items)

    @property
    def heads(self) -> tuple[DuelingQ, ...]:
        return (self.click, self.future)

    def forward(self, state: Tensor, actions: Tensor, items: Tensor) -> Tensor:
        return self.click(state, actions, items) + self.q_future(state, actions, items) / self.k


def _block_diag(blocks: Sequence[np.ndarray]) -> np.ndarray:
    out = np.zeros((sum(b.shape[0] for b in blocks), sum(b.shape[1] for b in blocks)), np.float32)
    r = c = 0
    for b in blocks:
        out[r : r + b.shape[0], c : c + b.shape[1]] = b
        r, c = r + b.shape[0], c + b.shape[1]
    return out


def stack_snapshots(snaps: Sequence[list], state_dim: int) -> dict[str, Any]:
    """M ``DuelingQ.snapshot()``s of one shape (state width ``state_dim``) as one wider network
    for ``act_stacked``: the first layers' columns side by side (the advantage net's split by
    input block: state, action, item embedding), later layers block-diagonal, the item
    embeddings side by side (n_items + 1, M·d)."""
    value = []
    for j in range(len(snaps[0][0])):
        ws = [s[0][j][0] for s in snaps]
        w = np.concatenate(ws, 1) if j == 0 else _block_diag(ws)
        value.append((w, np.concatenate([s[0][j][1] for s in snaps])))
    emb = [s[2][0][0] for s in snaps]
    w1 = [s[1][0][0] for s in snaps]
    split = w1[0].shape[0] - emb[0].shape[1]  # rows of the state and the action
    first = (
        np.concatenate([w[:state_dim] for w in w1], 1),
        np.concatenate([w[state_dim:split] for w in w1], 1),
        _block_diag([w[split:] for w in w1]),
        np.concatenate([s[1][0][1] for s in snaps]),
    )
    advantage = [
        (_block_diag([s[1][j][0] for s in snaps]), np.concatenate([s[1][j][1] for s in snaps]))
        for j in range(1, len(snaps[0][1]))
    ]
    return {"value": value, "first": first, "advantage": advantage, "emb": np.concatenate(emb, 1)}


class ActingStack:
    """``stack_snapshots`` of M networks of one shape, kept up to date in place: ``refresh(j)``
    copies network j's current weights into its blocks of the stacked arrays (``stacked``, for
    ``act_stacked``), which keep their layout, zeros included. Taking a network's weights again
    after each update then costs one copy per weight, not a new stacked network."""

    def __init__(self, nets: Sequence[DuelingQ], state_dim: int) -> None:
        self.nets = list(nets)
        self.stacked = stack_snapshots([n.snapshot() for n in self.nets], state_dim)
        self._slots = [self._plan(j, state_dim) for j in range(len(self.nets))]

    def _plan(self, j: int, sd: int) -> list[tuple[np.ndarray, Tensor, slice | None]]:
        """(destination view, source parameter, its input columns to take transposed, None:
        the whole parameter as it is) for each weight of network ``j``, at the places
        ``stack_snapshots`` puts them."""
        st, net = self.stacked, self.nets[j]
        out: list[tuple[np.ndarray, Tensor, slice | None]] = []
        every = slice(None)

        def layer(w: np.ndarray, b: np.ndarray, m: nn.Linear, side_by_side: bool) -> None:
            n_out, n_in = m.weight.shape
            cols = slice(j * n_out, (j + 1) * n_out)
            rows = slice(None) if side_by_side else slice(j * n_in, (j + 1) * n_in)
            out.append((w[rows, cols], m.weight, every))
            out.append((b[cols], m.bias, None))

        for i, (m, (w, b)) in enumerate(zip(net._v_lins, st["value"])):
            layer(w, b, m, side_by_side=i == 0)
        first, *rest = net._a_lins
        ws, wa, we, b1 = st["first"]
        h1 = first.weight.shape[0]
        de = net.item_emb.embedding_dim
        da = first.weight.shape[1] - sd - de
        cols = slice(j * h1, (j + 1) * h1)
        wt = first.weight
        out.append((ws[:, cols], wt, slice(0, sd)))
        out.append((wa[:, cols], wt, slice(sd, sd + da)))
        out.append((we[j * de : (j + 1) * de, cols], wt, slice(sd + da, None)))
        out.append((b1[cols], first.bias, None))
        for m, (w, b) in zip(rest, st["advantage"]):
            layer(w, b, m, side_by_side=False)
        out.append((st["emb"][:, j * de : (j + 1) * de], net.item_emb.weight, None))
        return out

    @torch.no_grad()
    def refresh(self, j: int) -> None:
        """Network ``j``'s current weights into the stacked arrays."""
        for dest, src, cols in self._slots[j]:
            a = src.detach().numpy()
            dest[...] = a if cols is None else a[:, cols].T


def double_dqn_target(
    reward: Tensor, q_online_next: Tensor, q_target_next: Tensor, gamma: float, k: int = 1
) -> Tensor:
    """``r + γ Q_target(s', argmax_a' Q_online(s', a'))``: (B,), (B, N'), (B, N') → (B,). With
    ``k > 1`` the next action is a list: the target network's values summed over the online
    network's top ``k``."""
    if gamma == 0.0:
        return reward
    best = q_online_next.topk(k, dim=1).indices if k > 1 else q_online_next.argmax(1, True)
    return reward + gamma * q_target_next.gather(1, best).sum(1)


__all__ = ["ActingStack", "DuelingQ", "SplitQ", "double_dqn_target", "stack_snapshots"]
