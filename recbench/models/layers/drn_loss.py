"""DRN's loss (Zheng et al., WWW 2018, §4.1): the double-DQN regression of its Q-networks,
whole or decomposed into per-item click values and one future value per list, with the linear
parts' values added. A mixin of ``recbench.models.drn.DRN``, which holds what it reads: the
networks ``q`` and ``q_target``, ``k``, ``gamma``, ``split``, ``bce``, the linear parts ``wide``
and ``fw`` with their feature widths, and ``spec``. A batch may carry the linear coefficients it
was drawn with (``wide_w``, ``fw``: the steps of a lagged learner run later); without them the
current ones are used.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from recbench.envs.policies import linucb_features
from recbench.models.layers.dqn import double_dqn_target
from recbench.models.layers.fqi import future_features

Coefs = Mapping[str, Tensor]  # the linear parts' coefficients: a batch's, or none (the current)
NO_COEFS: Coefs = MappingProxyType({})


class DRNLoss:
    """``loss(batch)`` and the linear parts' values, for ``DRN``."""

    def loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Squared error of ``Q(s, a)`` against the double-DQN target ``y`` per transition;
        decomposed, the mean over transitions of ``(Q_click(s, a) - click)²`` plus the mean over
        lists of ``(Q_future(s, L) - y_L)²``, ``y_L`` the list's reward less its clicks plus
        ``γ Σ_{a'∈L'} Q_target(s', a')`` (``double_dqn_target`` with k). Transitions come as
        whole lists, K consecutive ones each (as the replay stores and samples them). Requests
        are rows of ``state``/``actions``/``items`` (and ``next_*``); ``inv``/``next_inv`` map
        transitions to them (absent: one row per transition, ``Replay.batch`` groups them).
        With ``click_loss="bce"`` the click network's part (DN's whole loss) is the logistic
        loss of its logit against the click instead of the squared error."""
        if self.split:
            return self._split_loss(batch)
        inv = batch.get("inv")
        pos = batch["pos"]
        y = batch["reward"]
        s, a, i = batch["state"], batch["actions"], batch["items"]
        rows = torch.arange(len(pos)) if inv is None else inv
        if self.bce:  # the click alone (DN): a logistic loss on the network's logit
            return F.binary_cross_entropy_with_logits(self.q.logits(s, a, i)[rows, pos], y)
        q = self.q(s, a, i) + self._wide_q(s, a, batch)
        if self.gamma > 0.0:
            with torch.no_grad():
                ns, na = batch["next_state"], batch["next_actions"]
                wide = self._wide_q(ns, na, batch)
                q_on = self.q(ns, na, batch["next_items"]) + wide
                q_tg = self.q_target(ns, na, batch["next_items"]) + wide
                ninv = batch.get("next_inv")
                if ninv is not None:
                    q_on, q_tg = q_on[ninv], q_tg[ninv]
                y = torch.where(batch["has_next"], double_dqn_target(y, q_on, q_tg, self.gamma), y)
        q_sa = q[rows, pos]
        return ((q_sa - y) ** 2).mean()

    def _split_loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        k = self.k
        inv, pos, click = batch.get("inv"), batch["pos"], batch["click"]
        if len(pos) % k:
            raise ValueError(f"decomposed loss: {len(pos)} transitions are not whole lists of {k}")
        s, a, i = batch["state"], batch["actions"], batch["items"]
        rows = torch.arange(len(pos)) if inv is None else inv
        if self.bce:
            z = self.q.click.logits(s, a, i)[rows, pos]
            click_loss = F.binary_cross_entropy_with_logits(z, click)
        else:
            q_click = self.q.click(s, a, i) + self._wide_q(s, a, batch)
            click_loss = ((q_click[rows, pos] - click) ** 2).mean()
        q_f = self.q.q_future(s, a, i) + self._fw_q(s, a, batch)
        q_list = q_f[rows, pos].view(-1, k).mean(1)  # Q_future(s, L)
        return click_loss + ((q_list - self._future_target(batch)) ** 2).mean()

    @torch.no_grad()
    def _future_target(self, batch: Mapping[str, Tensor]) -> Tensor:
        """(lists,): each list's reward beyond its clicks, plus (γ > 0) the double-DQN value of
        the user's next list, ``γ Σ_{a'∈L'} Q_target(s', a')``."""
        k, ninv = self.k, batch.get("next_inv")
        y = (batch["reward"] - batch["click"]).view(-1, k)[:, 0]
        if self.gamma == 0.0:
            return y
        nxt = (batch["next_state"], batch["next_actions"], batch["next_items"])
        lin = self._linear_q(*nxt[:2], batch)
        q_on, q_tg = self.q(*nxt) + lin, self.q_target(*nxt) + lin
        if ninv is not None:
            q_on, q_tg = q_on[ninv], q_tg[ninv]
        first = slice(None, None, k)  # one row per list
        y_next = double_dqn_target(y, q_on[first], q_tg[first], self.gamma, k)
        return torch.where(batch["has_next"][first], y_next, y)

    def _linear_q(self, state: Tensor, actions: Tensor, c: Coefs = NO_COEFS) -> Tensor | float:
        """(R, N): each candidate's value from the linear parts, ``θ · x + θ_f · f / K``, with
        the coefficients ``c`` carries (a batch: those it was drawn with), else the current."""
        return self._wide_q(state, actions, c) + self._fw_q(state, actions, c) / self.k

    def _fw_q(self, state: Tensor, actions: Tensor, c: Coefs = NO_COEFS) -> Tensor | float:
        """(R, N): each candidate's linear future value ``θ_f · f(s, a)`` (``future_wide``; a
        list's is its items' mean), 0 without it."""
        if self.fw is None:
            return 0.0
        f = future_features(state, actions, self._f_cols, self._ctx)
        return f @ (c["fw"] if "fw" in c else torch.from_numpy(self.fw.astype(np.float32)))

    def _wide_q(self, state: Tensor, actions: Tensor, c: Coefs = NO_COEFS) -> Tensor | float:
        """(R, N): the click value's linear part ``θ · x(s, a)`` (``wide``), 0 without it."""
        if self.wide is None:
            return 0.0
        x = linucb_features(state, actions, self.spec.n_genres)
        return x @ (c["wide_w"] if "wide_w" in c else self._coefs()["wide_w"])

    def _coefs(self) -> dict[str, Tensor]:
        """The linear parts' current coefficients, as a batch carries them to its step."""
        out = {}
        if self.wide is not None:
            out["wide_w"] = torch.from_numpy(self.wide.w32.copy())
        if self.fw is not None:
            out["fw"] = torch.from_numpy(self.fw.astype(np.float32))
        return out


__all__ = ["DRNLoss"]
