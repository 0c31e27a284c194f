"""The crossing layers against their papers' equations, computed by direct loops."""

from __future__ import annotations

import pytest
import torch

from recbench.models.afm import AFM
from recbench.models.layers import (
    AttentionalPooling,
    BiInteraction,
    CompressedInteraction,
    CrossLayerMixture,
    CrossLayerV2,
    CrossNetwork,
    CrossNetworkV2,
    FactorizationMachine,
    InnerProduct,
    InteractingLayer,
    OuterProduct,
    PairwiseProduct,
    ResidualUnit,
)
from recbench.testing import random_batch, toy_schema

HAND = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]], dtype=torch.float64)  # (1, 3, 2)


def seeded(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def pairs(n: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def test_fm_linear_time_form_equals_pairwise_sum() -> None:
    fm = FactorizationMachine()
    close(fm(HAND), torch.tensor([11.0 + 17.0 + 39.0], dtype=torch.float64))
    v = seeded(4, 7, 5)
    expected = torch.stack([sum(v[b, i] @ v[b, j] for i, j in pairs(7)) for b in range(4)])
    close(fm(v), expected)


def test_bi_interaction_equals_sum_of_pairwise_products() -> None:
    bi = BiInteraction()
    close(bi(HAND), torch.tensor([[3.0 + 5.0 + 15.0, 8.0 + 12.0 + 24.0]], dtype=torch.float64))
    v = seeded(4, 7, 5)
    expected = torch.stack([sum(v[b, i] * v[b, j] for i, j in pairs(7)) for b in range(4)])
    close(bi(v), expected)


@pytest.mark.parametrize("fields", [5, PairwiseProduct.SELECT_MAX_FIELDS + 3])
def test_pairwise_product_order_values_and_gradient(fields: int) -> None:
    # both forms (gathers for few fields, slices for many): every pair in triu order, and the
    # gradient of each field the sum over the pairs it is in
    v = seeded(3, fields, 4).requires_grad_(True)
    layer = PairwiseProduct(fields)
    assert layer.select == (fields <= PairwiseProduct.SELECT_MAX_FIELDS)
    out = layer(v)
    expected = torch.stack([v[:, i] * v[:, j] for i, j in pairs(fields)], dim=1)
    assert out.shape == (3, fields * (fields - 1) // 2, 4)
    close(out, expected)
    g = seeded(*out.shape)
    (grad,) = torch.autograd.grad(out, v, g)
    (want,) = torch.autograd.grad(expected, v, g)
    close(grad, want)


def test_inner_product_equals_loop() -> None:
    close(InnerProduct(3)(HAND), torch.tensor([[11.0, 17.0, 39.0]], dtype=torch.float64))
    v = seeded(3, 6, 4)
    expected = torch.stack([(v[:, i] * v[:, j]).sum(-1) for i, j in pairs(6)], dim=1)
    close(InnerProduct(6)(v), expected)


def test_outer_product_is_superposition_of_all_pair_outer_products() -> None:
    # f_Σ = (9, 12): p = f_Σ f_Σᵀ
    close(OuterProduct()(HAND), torch.tensor([[81.0, 108.0, 108.0, 144.0]], dtype=torch.float64))
    v = seeded(3, 5, 4)
    expected = torch.stack(
        [sum(torch.outer(v[b, i], v[b, j]) for i in range(5) for j in range(5)) for b in range(3)]
    )
    close(OuterProduct()(v), expected.flatten(1))


def test_residual_unit_equals_formula() -> None:
    torch.manual_seed(0)
    unit = ResidualUnit(6, 9).double()
    x = seeded(4, 6)
    w1, b1, w2, b2 = unit.inner.weight, unit.inner.bias, unit.outer.weight, unit.outer.bias
    expected = torch.relu(x + torch.relu(x @ w1.T + b1) @ w2.T + b2)  # ReLU(x + F(x))
    close(unit(x), expected)
    # the shortcut: with the block's output forced to zero the unit is ReLU of its input
    torch.nn.init.zeros_(unit.outer.weight)
    torch.nn.init.zeros_(unit.outer.bias)
    close(unit(x), torch.relu(x))


def test_dcn_cross_network_equals_formula() -> None:
    net = CrossNetwork(2, num_layers=1).double()
    with torch.no_grad():
        net.weight.fill_(1.0)
    x0 = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    close(net(x0), torch.tensor([[4.0, 8.0]], dtype=torch.float64))  # x0·3 + x0

    torch.manual_seed(0)
    net = CrossNetwork(5, num_layers=3).double()
    with torch.no_grad():
        net.bias.normal_()
    x0 = seeded(4, 5)
    out = []
    for b in range(4):
        x = x0[b]
        for w, bias in zip(net.weight, net.bias):
            x = torch.outer(x0[b], x) @ w + bias + x  # x0 x_lᵀ w_l + b_l + x_l
        out.append(x)
    close(net(x0), torch.stack(out))


def test_dcn_v2_full_and_low_rank_layers_equal_formula() -> None:
    torch.manual_seed(0)
    x0, x = seeded(4, 6, seed=1), seeded(4, 6, seed=2)
    full = CrossLayerV2(6).double()
    w, b = full.project.weight, full.project.bias
    close(full(x0, x), torch.stack([x0[i] * (w @ x[i] + b) + x[i] for i in range(4)]))

    low = CrossLayerV2(6, rank=2).double()
    v, u, b = low.project[0].weight.T, low.project[1].weight, low.project[1].bias  # (6,2),(6,2)
    assert v.shape == (6, 2) and u.shape == (6, 2)
    w = u @ v.T  # W = U Vᵀ, rank 2
    assert torch.linalg.matrix_rank(w) == 2
    close(low(x0, x), torch.stack([x0[i] * (w @ x[i] + b) + x[i] for i in range(4)]))


def test_dcn_v2_mixture_layer_equals_formula() -> None:
    torch.manual_seed(0)
    layer = CrossLayerMixture(6, rank=3, num_experts=4).double()
    with torch.no_grad():
        layer.bias.normal_()
    x0, x = seeded(5, 6, seed=1), seeded(5, 6, seed=2)
    out = []
    for n in range(5):
        gates = torch.softmax(layer.gate.weight @ x[n], dim=0)
        total = x[n].clone()
        for i in range(4):
            v_i, c_i, u_i = layer.v[i], layer.c[i], layer.u[i].T  # (d, r), (r, r), (d, r)
            expert = x0[n] * (u_i @ torch.tanh(c_i @ torch.tanh(v_i.T @ x[n])) + layer.bias)
            total = total + gates[i] * expert
        out.append(total)
    close(layer(x0, x), torch.stack(out))


@pytest.mark.parametrize("kind", ["full", "low_rank", "mixture"])
def test_dcn_v2_network_stacks_layers_on_x0(kind: str) -> None:
    torch.manual_seed(0)
    net = CrossNetworkV2(6, num_layers=3, kind=kind, rank=2, num_experts=3).double()
    x0 = seeded(4, 6)
    x = x0
    for layer in net.layers:
        x = layer(x0, x)
    close(net(x0), x)
    assert net(x0).shape == (4, 6)


def test_dcn_v2_network_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="low_rank"):
        CrossNetworkV2(6, kind="lowrank")


def test_attentional_pooling_equals_formula() -> None:
    torch.manual_seed(0)
    pool = AttentionalPooling(4, attention_dim=3).double()
    e = seeded(2, 6, 4)
    w, b, h = pool.project.weight, pool.project.bias, pool.h.weight[0]
    out = []
    for n in range(2):
        scores = torch.stack([h @ torch.relu(w @ e[n, p] + b) for p in range(6)])
        a = torch.exp(scores) / torch.exp(scores).sum()
        out.append(sum(a[p] * e[n, p] for p in range(6)))
    close(pool(e), torch.stack(out))


def test_afm_output_equals_formula() -> None:
    torch.manual_seed(0)
    schema = toy_schema(with_history=False)
    model = AFM(schema, embed_dim=4, attention_dim=3).double().eval()
    batch = random_batch(schema, 3)
    batch = {k: t.double() if t.is_floating_point() else t for k, t in batch.items()}
    batch["genres"][0] = 0  # row 0's multi-value field has no value: its pairs are not in R_x
    with torch.no_grad():
        model.embedding.table.weight.normal_()
        model.linear.weights.table.weight.normal_()
        model.linear.bias.fill_(0.5)
        model.attention.project.bias.normal_()  # an empty field's pair scores h·ReLU(b) ≠ 0
    v = model.embedding(batch)  # (B, F, D)
    first_order = model.linear(batch)  # w0 + Σ w_i x_i
    w, b = model.attention.project.weight, model.attention.project.bias
    h, p = model.attention.h.weight[0], model.p.weight[0]
    f = v.shape[1]
    genres = len(schema.sparse)  # the multi field follows the sparse ones
    out = []
    for n in range(3):
        # the softmax runs over R_x, the pairs of two fields that have a value
        inter = [v[n, i] * v[n, j] for i, j in pairs(f) if n or genres not in (i, j)]
        a = torch.softmax(torch.stack([h @ torch.relu(w @ e + b) for e in inter]), dim=0)
        out.append(first_order[n] + p @ sum(a_ij * e for a_ij, e in zip(a, inter)))
    close(model(batch), torch.stack(out))


def test_cin_equals_loop() -> None:
    torch.manual_seed(0)
    m, d, sizes = 4, 3, [5, 2]
    cin = CompressedInteraction(m, sizes).double()
    x0 = seeded(2, m, d)
    out = []
    for n in range(2):
        prev, pooled = x0[n], []
        for w in cin.weights:  # w: (H_k, H_{k-1}, m)
            nxt = torch.zeros(w.shape[0], d, dtype=torch.float64)
            for h in range(w.shape[0]):
                for i in range(w.shape[1]):
                    for j in range(m):
                        nxt[h] += w[h, i, j] * (prev[i] * x0[n, j])
            pooled.append(nxt.sum(dim=1))
            prev = nxt
        out.append(torch.cat(pooled))
    result = cin(x0)
    assert result.shape == (2, sum(sizes))
    close(result, torch.stack(out))


def test_interacting_layer_equals_per_head_computation() -> None:
    torch.manual_seed(0)
    heads, d_att, dim, f = 2, 3, 4, 5
    layer = InteractingLayer(dim, attention_dim=d_att, num_heads=heads).double()
    e = seeded(2, f, dim)
    wq, wk, wv, wres = layer.project.weight.split(heads * d_att, dim=0)  # each (H*d', D)
    out = torch.zeros(2, f, heads * d_att, dtype=torch.float64)
    for n in range(2):
        for m in range(f):
            parts = []
            for hd in range(heads):
                rows = slice(hd * d_att, (hd + 1) * d_att)
                q = wq[rows] @ e[n, m]
                scores = torch.stack([q @ (wk[rows] @ e[n, k]) for k in range(f)])
                alpha = torch.softmax(scores, dim=0)
                parts.append(sum(alpha[k] * (wv[rows] @ e[n, k]) for k in range(f)))
            out[n, m] = torch.relu(torch.cat(parts) + wres @ e[n, m])
    close(layer(e), out)


def test_batch_normalised_models_train_on_a_one_row_batch():
    """The last batch of an epoch on a DDP rank can hold one row; nn.BatchNorm1d raises there."""
    import torch

    from recbench.models.layers.mlp import MLP
    from recbench.models.nfm import NFM
    from recbench.testing import random_batch, toy_schema

    schema = toy_schema(with_history=False)
    model = NFM(schema, embed_dim=4, hidden=(8,), batch_norm=True).train()
    out = model(random_batch(schema, batch_size=1))
    assert out.shape == (1,) and torch.isfinite(out).all()
    mlp = MLP(3, (4,), 1, batch_norm=True).train()
    assert mlp(torch.randn(1, 3)).shape == (1, 1)
