"""DRN's replay memory: requests (state, candidate pool) and the item transitions of the lists
shown for them, in ring buffers, sampled as whole lists for the major update. A state whose
leading columns are the user's one-hot (DRN's ``user_id``) is held as the user's index and the
rest, and rebuilt when read (``states``): the one-hot would cost ``n_users`` floats a request."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from recbench.envs.features import EnvSpec


class Replay:
    """Requests (state, pool) and item transitions ``(request, pool index, reward, next
    request)`` in ring buffers; a request is addressed by its global number."""

    def __init__(self, capacity: int, spec: EnvSpec, one_hot_users: int = 0) -> None:
        """``spec.state_dim`` the full state's width, of which the first ``one_hot_users``
        columns are the user's one-hot (0: none)."""
        n, k = spec.n_candidates, spec.slate_size
        self.cap, self.n_users = capacity, one_hot_users
        self.state = np.zeros((capacity, spec.state_dim - one_hot_users), np.float32)
        self.user = np.zeros(capacity, np.int64)
        self.actions = np.zeros((capacity, n, spec.action_dim), np.float32)
        self.items = np.zeros((capacity, n), np.int64)
        self.n_req = 0
        tcap = capacity * k
        self.t_req = np.zeros(tcap, np.int64)
        self.t_pos = np.zeros(tcap, np.int64)
        self.t_reward = np.zeros(tcap, np.float32)
        self.t_click = np.zeros(tcap, np.float32)  # the click alone (decomposed targets)
        self.t_next = np.full(tcap, -1, np.int64)
        self.tcap, self.n_tr = tcap, 0

    def add_request(
        self, state: np.ndarray, actions: np.ndarray, items: np.ndarray, user: int = 0
    ) -> int:
        """Hold a request (its full state, one-hot included) as number ``n_req``."""
        i = self.n_req % self.cap
        self.state[i], self.actions[i], self.items[i] = state[self.n_users :], actions, items
        self.user[i] = user
        self.n_req += 1
        return self.n_req - 1

    def states(self, rows: np.ndarray) -> np.ndarray:
        """The full states of ring rows ``rows`` (R, state_dim), the one-hot rebuilt."""
        rest = self.state[rows]
        if not self.n_users:
            return rest
        out = np.zeros((len(rest), self.n_users + rest.shape[1]), np.float32)
        out[:, self.n_users :] = rest
        out[np.arange(len(rest)), self.user[rows]] = 1.0
        return out

    def add_transitions(
        self,
        req: int,
        pos: np.ndarray,
        reward: np.ndarray,
        next_req: int,
        click: np.ndarray | None = None,
    ) -> np.ndarray:
        start, n = self.n_tr % self.tcap, len(pos)
        # one list's transitions: a slice of the ring unless they wrap around its end
        idx = (
            slice(start, start + n)
            if start + n <= self.tcap
            else (start + np.arange(n)) % self.tcap
        )
        self.t_req[idx], self.t_pos[idx], self.t_reward[idx], self.t_next[idx] = (
            req,
            pos,
            reward,
            next_req,
        )
        self.t_click[idx] = reward if click is None else click
        self.n_tr += len(pos)
        return self.n_tr - len(pos) + np.arange(len(pos))

    def sample_lists(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """The transitions of ``n`` lists drawn uniformly (with replacement) from those held.
        Every list adds its ``slate_size`` transitions together, so a list is an aligned block
        of them, and each held transition is equally likely to be in the sample; a list's
        transitions share their request and next request, which a minibatch evaluates once."""
        k = self.tcap // self.cap
        held = min(self.n_tr, self.tcap) // k
        first = self.n_tr // k - held
        lists = first + rng.integers(0, held, n)
        return (lists[:, None] * k + np.arange(k)).reshape(-1)

    def valid(self, tr: np.ndarray) -> np.ndarray:
        """Transitions still held whose requests are both still held."""
        slot = tr % self.tcap
        oldest = self.n_req - self.cap
        ok = (tr >= self.n_tr - self.tcap) & (self.t_req[slot] >= oldest)
        nxt = self.t_next[slot]
        return tr[ok & ((nxt < 0) | (nxt >= oldest))]

    def batch(self, tr: np.ndarray) -> dict[str, Tensor]:
        """Transitions ``tr`` as a minibatch over their distinct requests: ``state``,
        ``actions``, ``items`` (R, ...) and ``next_*`` (R', ...) once per request, ``inv`` /
        ``next_inv`` (B,) the row of each transition's request, ``pos``, ``reward``, ``click``,
        ``has_next`` (B,). A transition without a next request points at its own."""
        slot = tr % self.tcap
        req = self.t_req[slot]
        nxt = self.t_next[slot]
        has = nxt >= 0
        uniq, inv = np.unique(req, return_inverse=True)
        nuniq, ninv = np.unique(np.where(has, nxt, req), return_inverse=True)
        r, nr = uniq % self.cap, nuniq % self.cap
        t = torch.from_numpy
        return {
            "state": t(self.states(r)),
            "actions": t(self.actions[r]),
            "items": t(self.items[r]),
            "inv": t(inv.reshape(-1)),
            "pos": t(self.t_pos[slot]),
            "reward": t(self.t_reward[slot]),
            "click": t(self.t_click[slot]),
            "has_next": t(has),
            "next_state": t(self.states(nr)),
            "next_actions": t(self.actions[nr]),
            "next_items": t(self.items[nr]),
            "next_inv": t(ninv.reshape(-1)),
        }


__all__ = ["Replay"]
