"""Whole CTR models against their papers' equations: each model's output on a toy batch equals
a reference written from the paper's formula, with its own embedding lookup, in float64. (The
layer tests check the parts; these check how each model puts them together: a DeepFM without
its FM term, a DCN without its cross network or an NFM with a plain sum would fail here.)"""

from __future__ import annotations

import pytest
import torch

from recbench.models.autoint import AutoInt
from recbench.models.dcn import DCN
from recbench.models.dcn_v2 import DCNv2
from recbench.models.deepfm import DeepFM
from recbench.models.fm import FM
from recbench.models.nfm import NFM
from recbench.models.pnn import PNN
from recbench.models.wide_deep import WideDeep
from recbench.models.xdeepfm import XDeepFM
from recbench.testing import random_batch, toy_schema

S = toy_schema(with_history=False)
N = 6


def emb(fe, b):
    """(B, F, D): each field's embedding looked up row by row (multi-value fields: the mean of
    their items; dense fields: the value times the field's vector)."""
    W = fe.table.weight
    out = []
    for n in range(len(b["label"])):
        rows = []
        for i, f in enumerate(S.sparse):
            rows.append(W[fe.offset_of[f.name] + b["sparse"][n, i]])
        for f in S.multi:
            ids = [int(c) for c in b[f.name][n] if c > 0]
            zero = torch.zeros(W.shape[1], dtype=W.dtype)
            rows.append(sum(W[fe.offset_of[f.name] + c] for c in ids) / len(ids) if ids else zero)
        for j, _f in enumerate(S.dense):
            rows.append(b["dense"][n, j] * fe.dense_weight[j])
        out.append(torch.stack(rows))
    return torch.stack(out)


def lin(fl, b):
    return emb(fl.weights, b).sum((1, 2)) + fl.bias


def mlp(m, x):
    for layer in m.net:
        x = layer(x)
    return x


def randomise(model):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.double().eval()


def pairs(f):
    return [(i, j) for i in range(f) for j in range(i + 1, f)]


def _outputs_and_references() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    B = random_batch(S, N, seed=3)
    B = {k: v.double() if v.is_floating_point() else v for k, v in B.items()}
    res = {}
    # FM: w0 + Σ w_i x_i + Σ_{i<j} <v_i, v_j>
    m = randomise(FM(S, 4))
    v = emb(m.embedding, B)
    res["fm"] = (
        m(B),
        lin(m.linear, B)
        + torch.stack([sum(v[n, i] @ v[n, j] for i, j in pairs(v.shape[1])) for n in range(N)]),
    )
    # DeepFM
    m = randomise(DeepFM(S, 4, hidden=(5,)))
    v = emb(m.embedding, B)
    res["deepfm"] = (
        m(B),
        lin(m.linear, B)
        + torch.stack([sum(v[n, i] @ v[n, j] for i, j in pairs(v.shape[1])) for n in range(N)])
        + mlp(m.mlp, v.flatten(1)).squeeze(-1),
    )
    # NFM: lin + h^T MLP(Σ_{i<j} v_i ⊙ v_j)
    m = randomise(NFM(S, 4, hidden=(5,), batch_norm=False))
    v = emb(m.embedding, B)
    bi = torch.stack([sum(v[n, i] * v[n, j] for i, j in pairs(v.shape[1])) for n in range(N)])
    res["nfm"] = (m(B), lin(m.linear, B) + mlp(m.mlp, bi).squeeze(-1))
    # PNN: relu(W_z z + W_p p + b1) ...
    for prod in ("inner", "outer", "both"):
        m = randomise(PNN(S, 4, product=prod, hidden=(5, 3)))
        v = emb(m.embedding, B)
        sig = [v.flatten(1)]
        if prod in ("inner", "both"):
            sig.append(
                torch.stack(
                    [
                        torch.stack([v[n, i] @ v[n, j] for i, j in pairs(v.shape[1])])
                        for n in range(N)
                    ]
                )
            )
        if prod in ("outer", "both"):
            sig.append(
                torch.stack(
                    [
                        sum(
                            torch.outer(v[n, i], v[n, j])
                            for i in range(v.shape[1])
                            for j in range(v.shape[1])
                        ).flatten()
                        for n in range(N)
                    ]
                )
            )
        res[f"pnn_{prod}"] = (m(B), mlp(m.mlp, torch.cat(sig, 1)).squeeze(-1))
    # DCN: x_{l+1} = x0 x_l^T w + b + x_l ; concat with deep; linear
    m = randomise(DCN(S, 4, num_cross=2, hidden=(5,)))
    x0 = emb(m.embedding, B).flatten(1)
    outs = []
    for n in range(N):
        x = x0[n]
        for w, b in zip(m.cross.weight, m.cross.bias):
            x = torch.outer(x0[n], x) @ w + b + x
        outs.append(x)
    res["dcn"] = (m(B), m.out(torch.cat([torch.stack(outs), mlp(m.deep, x0)], 1)).squeeze(-1))
    # DCN-v2 full / low rank, stacked / parallel
    for cross in ("full", "low_rank"):
        for st in ("stacked", "parallel"):
            m = randomise(DCNv2(S, 4, cross=cross, structure=st, num_cross=2, rank=3, hidden=(5,)))
            x0 = emb(m.embedding, B).flatten(1)
            x = x0
            for layer in m.cross.layers:
                if cross == "full":
                    W, b = layer.project.weight, layer.project.bias
                else:
                    W, b = layer.project[1].weight @ layer.project[0].weight, layer.project[1].bias
                x = x0 * (x @ W.T + b) + x
            h = mlp(m.deep, x) if st == "stacked" else torch.cat([x, mlp(m.deep, x0)], 1)
            res[f"dcnv2_{cross}_{st}"] = (m(B), m.out(h).squeeze(-1))
    # xDeepFM: lin + w_cin^T p+ + dnn
    m = randomise(XDeepFM(S, 4, cin=(3, 2), hidden=(5,)))
    v = emb(m.embedding, B)
    pooled = []
    xk = v
    for W in m.cin.weights:
        xk = torch.einsum("hij,nid,njd->nhd", W, xk, v)
        pooled.append(xk.sum(-1))
    res["xdeepfm"] = (
        m(B),
        lin(m.linear, B)
        + m.cin_out(torch.cat(pooled, 1)).squeeze(-1)
        + mlp(m.mlp, v.flatten(1)).squeeze(-1),
    )
    # AutoInt: per head softmax_k <Wq e_m, Wk e_k>, Σ α Wv e_k; heads concatenated,
    # relu(+ W_res e_m); a linear output
    m = randomise(AutoInt(S, 4, num_layers=2, num_heads=2, attention_dim=3))
    e = emb(m.embedding, B)
    for layer in m.interacting:
        wq, wk, wv, wr = layer.project.weight.split(layer.out_dim)
        H = layer.heads
        d = layer.out_dim // H
        new = []
        for n in range(N):
            rows = []
            for i in range(e.shape[1]):
                hs = []
                for h in range(H):
                    s = slice(h * d, (h + 1) * d)
                    sc = torch.stack(
                        [(wq[s] @ e[n, i]) @ (wk[s] @ e[n, k]) for k in range(e.shape[1])]
                    )
                    a = torch.exp(sc) / torch.exp(sc).sum()
                    hs.append(sum(a[k] * (wv[s] @ e[n, k]) for k in range(e.shape[1])))
                rows.append(torch.relu(torch.cat(hs) + wr @ e[n, i]))
            new.append(torch.stack(rows))
        e = torch.stack(new)
    res["autoint"] = (m(B), m.out(e.flatten(1)).squeeze(-1))
    # Wide&Deep with a sparse x multi cross
    m = randomise(WideDeep(S, 4, crosses=[["gender", "genres"], ["age", "item_id"]], hidden=(5,)))
    # one weight per crossed value pair: gender (4 values) x genres (8) in rows 0..31, then
    # age (9) x item_id (30) from row 32, row = first * (second's vocabulary) + second
    cw = m.crosses.weight.weight[:, 0]
    wide = []
    for n in range(N):
        g = int(B["sparse"][n, 2])
        a = int(B["sparse"][n, 3])
        it = int(B["sparse"][n, 1])
        t = sum(cw[g * 8 + c] for c in B["genres"][n].tolist() if c > 0)
        t = t + cw[4 * 8 + a * 30 + it]
        wide.append(t)
    res["wide_deep"] = (
        m(B),
        lin(m.linear, B)
        + torch.stack(wide)
        + mlp(m.mlp, emb(m.embedding, B).flatten(1)).squeeze(-1),
    )
    return res


RESULTS: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


@pytest.mark.parametrize(
    "name",
    [
        "fm",
        "deepfm",
        "nfm",
        "pnn_inner",
        "pnn_outer",
        "pnn_both",
        "dcn",
        "dcnv2_full_stacked",
        "dcnv2_full_parallel",
        "dcnv2_low_rank_stacked",
        "dcnv2_low_rank_parallel",
        "xdeepfm",
        "autoint",
        "wide_deep",
    ],  # fmt: skip
)
def test_ctr_model_equals_its_papers_formula(name):
    if not RESULTS:
        with torch.no_grad():
            RESULTS.update(_outputs_and_references())
    got, want = RESULTS[name]
    assert got.shape == want.shape == (N,)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
