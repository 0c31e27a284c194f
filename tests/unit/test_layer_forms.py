"""Layers computed in a faster order than their papers write them equal the straightforward
form of the equations, forward and gradient (same parameters, float64)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from recbench.models.layers import CompressedInteraction, InteractingLayer
from recbench.models.layers.cin import moments_pay


def seeded(*shape: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)


def grads(out: Tensor, upstream: Tensor, *inputs: Tensor) -> tuple[Tensor, ...]:
    return torch.autograd.grad(out, inputs, upstream)


def cin_reference(x0: Tensor, weights: list[Tensor]) -> Tensor:
    """Every layer in full, ``X^k_{h,*} = Σ_i Σ_j W^{k,h}_{ij} (X^{k-1}_{i,*} ⊙ X^0_{j,*})``, then
    each layer's maps summed over the embedding dimension."""
    x, pooled = x0, []
    for w in weights:  # (H_k, H_{k-1}, m)
        x = torch.einsum("kij,bid,bjd->bkd", w, x, x0)  # (B, H_k, D)
        pooled.append(x.sum(dim=2))
    return torch.cat(pooled, dim=1)


@pytest.mark.parametrize(
    ("m", "d", "sizes", "moments"),
    [
        (4, 6, (5,), False),  # one layer: only the pooled last layer
        (4, 6, (5, 3), False),  # the second-to-last layer in full
        (4, 32, (5, 3), True),  # the second-to-last layer from third-order moments
        (4, 32, (4, 6, 3), True),  # a full layer before the moments
        (4, 6, (4, 6, 3), False),
    ],
)
def test_cin_equals_full_layers_forward_and_gradient(
    m: int, d: int, sizes: tuple[int, ...], moments: bool
) -> None:
    assert len(sizes) == 1 or moments_pay(m, d, sizes[-2]) == moments
    torch.manual_seed(0)
    cin = CompressedInteraction(m, sizes).double()
    x0 = seeded(3, m, d)
    upstream = torch.randn(3, sum(sizes), dtype=torch.float64)
    weights = list(cin.weights)
    out, ref = cin(x0), cin_reference(x0, weights)
    torch.testing.assert_close(out, ref)
    for got, want in zip(grads(out, upstream, x0, *weights), grads(ref, upstream, x0, *weights)):
        torch.testing.assert_close(got, want)


def test_cin_without_layers_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one layer"):
        CompressedInteraction(4, [])


def interacting_reference(layer: InteractingLayer, e: Tensor) -> Tensor:
    """Per head h, ``α = softmax_k(<W_Q e_m, W_K e_k>)`` and ``Σ_k α_mk W_V e_k``; heads
    concatenated, then ``ReLU(· + W_Res e_m)``, each projection its own product."""
    wq, wk, wv, wres = layer.project.weight.split(layer.out_dim)  # each (H*d', D)
    d = layer.out_dim // layer.heads
    heads = []
    for h in range(layer.heads):
        rows = slice(h * d, (h + 1) * d)
        q, k, v = e @ wq[rows].t(), e @ wk[rows].t(), e @ wv[rows].t()  # (B, F, d')
        alpha = torch.softmax(q @ k.transpose(1, 2), dim=-1)  # (B, F_q, F_k)
        heads.append(alpha @ v)
    return torch.relu(torch.cat(heads, dim=-1) + e @ wres.t())


@pytest.mark.parametrize(("dim", "attention_dim", "heads"), [(4, 3, 2), (6, 5, 1), (3, 2, 3)])
def test_interacting_layer_equals_per_head_form_forward_and_gradient(
    dim: int, attention_dim: int, heads: int
) -> None:
    torch.manual_seed(0)
    layer = InteractingLayer(dim, attention_dim=attention_dim, num_heads=heads).double()
    e = seeded(3, 5, dim)
    upstream = torch.randn(3, 5, heads * attention_dim, dtype=torch.float64)
    w = layer.project.weight
    out, ref = layer(e), interacting_reference(layer, e)
    assert (ref > 0).any() and (ref == 0).any()  # both sides of the ReLU are exercised
    torch.testing.assert_close(out, ref)
    for got, want in zip(grads(out, upstream, e, w), grads(ref, upstream, e, w)):
        torch.testing.assert_close(got, want)


def test_interacting_layer_ignores_fields_without_a_value() -> None:
    """A multi field with no value (an empty bag, embedded as zero) takes no attention weight
    and outputs a zero row: the present fields' rows are those of the layer run on them alone."""
    torch.manual_seed(0)
    layer = InteractingLayer(4, attention_dim=3, num_heads=2).double()
    e = seeded(3, 5, 4)
    present = torch.ones(3, 5, dtype=torch.bool)
    present[0, 4] = False  # row 0's last field has no value
    present[2, 1] = False
    with torch.no_grad():
        e[~present] = 0.0
    out = layer(e, present)
    for n in range(3):
        keep = present[n]
        torch.testing.assert_close(
            out[n, keep], interacting_reference(layer, e[n : n + 1, keep])[0]
        )
        assert (out[n, ~keep] == 0).all()
    torch.testing.assert_close(layer(e, torch.ones_like(present)), layer(e))


def test_autoint_scores_a_row_with_an_empty_field_from_its_present_fields() -> None:
    from recbench.models.autoint import AutoInt
    from recbench.testing import random_batch, toy_schema

    torch.manual_seed(0)
    schema = toy_schema(with_history=False)
    model = AutoInt(schema, embed_dim=4, num_layers=2, num_heads=2, attention_dim=3).double()
    model.eval()
    batch = random_batch(schema, 4)
    batch = {k: t.double() if t.is_floating_point() else t for k, t in batch.items()}
    batch["genres"][0] = 0  # row 0 has no genre
    batch["genres"][1:, 0] = 2  # the others have at least one
    e = model.embedding(batch)
    genres = len(schema.sparse)  # the multi field follows the sparse ones
    keep = [i for i in range(e.shape[1]) if i != genres]
    x = e[:1, keep]
    for layer in model.interacting:
        x = interacting_reference(layer, x)
    full = torch.zeros(1, e.shape[1], x.shape[-1], dtype=x.dtype)
    full[:, keep] = x
    with torch.no_grad():
        torch.testing.assert_close(model(batch)[0], model.out(full.flatten(1))[0, 0])
