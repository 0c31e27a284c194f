"""DIN and DIEN against their papers' equations, row by row in float64, with their own
embedding lookup: DIN's unnormalised attention pooling (Zhou et al., KDD 2018, eq. 3), DIEN's
GRU interest extractor, attention (eq. 8), AUGRU (eq. 11-12) and auxiliary loss (eq. 6). A
plain GRU in place of the AUGRU, an update gate scaled by a², or the AUGRU fed the raw history
instead of the extractor's states would fail here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recbench.models.dien import DIEN
from recbench.models.din import DIN
from recbench.testing import random_batch, toy_schema

S = toy_schema()
N = 8


def batch():
    b = random_batch(S, N, seed=5)
    b = {k: v.double() if v.is_floating_point() else v for k, v in b.items()}
    b["hist_item_id"][3] = 0  # a row without history
    b["hist_item_id_neg"][3] = 0
    return b


def rnd(m):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.4)
    return m.double()


def item_vec(fe, code):
    """An item's embedding beside the mean of its attributes' (genres) embeddings."""
    W = fe.table.weight
    g = [c for c in fe.attr_genres[code].tolist() if c > 0]
    zero = torch.zeros(W.shape[1], dtype=W.dtype)
    gv = sum(W[fe.offset_of["genres"] + c] for c in g) / len(g) if g else zero
    return torch.cat([W[fe.offset_of["item_id"] + code], gv])


def context(fe, b, n):
    """The user and context fields (every sparse field but the item) and the dense one."""
    W = fe.table.weight
    fields = ["user_id", "item_id", "gender", "age"]
    parts = [W[fe.offset_of[f] + b["sparse"][n, i]] for i, f in enumerate(fields) if f != "item_id"]
    parts.append(b["dense"][n, 0] * fe.dense_weight[0])
    return torch.cat(parts)


def run(net, x):
    for layer in net:
        x = layer(x)
    return x


def test_din_pools_the_history_by_unnormalised_attention():
    """v_U = Σ_j a(e_j, v_A) e_j with a = MLP([e, v, e − v, e ⊙ v]), no softmax."""
    B = batch()
    m = rnd(DIN(S, 4, hidden=(5,), unit_hidden=(3,))).eval()
    fe = m.inputs.embedding
    want = []
    for n in range(N):
        v = item_vec(fe, int(B["sparse"][n, 1]))
        interest = torch.zeros_like(v)
        for c in [int(c) for c in B["hist_item_id"][n] if c > 0]:
            e = item_vec(fe, c)
            u = m.unit
            a = u.rest(u.act(u.first(torch.cat([e, v, e - v, e * v])[None])))[0, 0]
            interest = interest + a * e
        want.append(run(m.mlp.net, torch.cat([context(fe, B, n), v, interest])[None])[0, 0])
    with torch.no_grad():
        torch.testing.assert_close(m(B), torch.stack(want), rtol=1e-12, atol=1e-12)


def _dien_reference(m, B, norm: bool):
    """(logits (N,), auxiliary loss) of DIEN ``m`` computed row by row from the equations."""
    fe = m.inputs.embedding
    gru = torch.nn.GRUCell(m.extractor.weight_ih.shape[1], m.extractor.hidden_dim).double()
    gru.load_state_dict(dict(m.extractor.state_dict().items()))
    ev = m.evolution
    H = ev.hidden_dim
    want, aux_terms, n_click = [], [], 0
    for n in range(N):
        v = item_vec(fe, int(B["sparse"][n, 1]))
        hist = [int(c) for c in B["hist_item_id"][n] if c > 0]
        negs = [int(c) for c in B["hist_item_id_neg"][n][: len(hist)]]
        h = torch.zeros(1, H, dtype=torch.double)
        states = []
        for c in hist:  # the interest extractor: a GRU over the behaviours
            h = gru(item_vec(fe, c)[None], h)
            states.append(h[0])
        if hist:  # eq. 8: softmax over the history of h_t W e_a
            a = torch.softmax(torch.stack([s @ (m.bilinear.weight @ v) for s in states]), 0)
        hp = torch.zeros(H, dtype=torch.double)
        for t, s in enumerate(states):  # the AUGRU, eq. 11-12: the update gate scaled by a_t
            gi = ev.weight_ih @ s + ev.bias_ih
            gh = ev.weight_hh @ hp + ev.bias_hh
            r = torch.sigmoid(gi[:H] + gh[:H])
            u = 1 - torch.sigmoid(gi[H : 2 * H] + gh[H : 2 * H])
            ht = torch.tanh(gi[2 * H :] + r * gh[2 * H :])
            u2 = a[t] * u
            hp = (1 - u2) * hp + u2 * ht
        pooled = sum((item_vec(fe, c) for c in hist), torch.zeros_like(v))
        x = torch.cat([hp, v, context(fe, B, n), pooled, v * pooled])[None]
        want.append(run(m.mlp.net, m.norm(x) if norm else x)[0, 0])
        for t in range(len(hist) - 1):  # eq. 6: state t against the next click and a negative
            nxt = torch.cat([states[t], item_vec(fe, hist[t + 1])])[None]
            aux_terms.append(F.softplus(-m.aux_scorer(nxt)[0, 0]))
            n_click += 1
            if negs[t + 1] > 0:
                neg = torch.cat([states[t], item_vec(fe, negs[t + 1])])[None]
                aux_terms.append(F.softplus(m.aux_scorer(neg)[0, 0]))
    return torch.stack(want), sum(aux_terms) / n_click


@pytest.mark.parametrize("norm", [False, True], ids=["plain", "input_norm"])
def test_dien_extractor_attention_augru_and_auxiliary_loss(norm):
    B = batch()
    m = rnd(DIEN(S, 4, hidden=(5,), activation="prelu", input_norm=norm))
    if norm:
        with torch.no_grad():
            m.norm.running_var.uniform_(0.5, 2)
            m.norm.running_mean.normal_()
    with torch.no_grad():
        logits, aux = _dien_reference(m, B, norm)
        m.eval()
        torch.testing.assert_close(m(B), logits, rtol=1e-12, atol=1e-12)
        if not norm:  # training mode: the same logits (no batch statistics) and the aux loss
            m.train()
            out = m(B)
            torch.testing.assert_close(out["logits"], logits, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(out["aux_loss"], aux, rtol=1e-12, atol=1e-12)
