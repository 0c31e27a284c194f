"""GMF, NCF's MLP and NeuMF against the NCF paper's equations (He et al., WWW 2017, eq. 9-12),
their all-items scoring paths, and NeuMF's pretraining from GMF and MLP runs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from recbench.data.schema import InteractionSchema
from recbench.errors import ConfigError
from recbench.models import layers
from recbench.models.gmf import GMF
from recbench.models.ncf_mlp import NCFMLP
from recbench.models.neumf import NeuMF

SCHEMA = InteractionSchema(num_users=6, num_items=11, item_counts=torch.ones(12))
U = torch.tensor([1, 2, 6, 3])
I = torch.tensor([4, 11, 1, 7])  # noqa: E741


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model


def every_pair(model, users):
    """Pairwise forward over every item code 1..n for each user. (B, n)"""
    n = SCHEMA.num_items
    items = torch.arange(1, n + 1)
    out = model({"user": users.repeat_interleave(n), "item": items.repeat(len(users))})
    return out.view(len(users), n)


def test_gmf_is_h_dot_the_elementwise_product():
    m = randomise(GMF(SCHEMA, dim=5))
    p, q = m.user.weight[U], m.item.weight[I]
    h, b = m.out.weight[0], m.out.bias
    want = (h * (p * q)).sum(-1) + b  # eq. 9 before the sigmoid
    assert torch.allclose(m({"user": U, "item": I}), want, atol=1e-5)
    assert torch.allclose(m.score_all({"user": U})[:, 1:], every_pair(m, U), atol=1e-5)


def test_ncf_mlp_is_a_relu_tower_over_the_concatenation(monkeypatch):
    m = randomise(NCFMLP(SCHEMA, layers=[8, 6, 4, 2]))
    z = torch.cat([m.user.weight[U], m.item.weight[I]], dim=1)  # eq. 10: z1 = [p_u; q_i]
    for layer in m.tower.layers:
        z = F.relu(z @ layer.weight.T + layer.bias)
    want = z @ m.out.weight[0] + m.out.bias
    assert torch.allclose(m({"user": U, "item": I}), want, atol=1e-5)
    # the blocked all-items path, with blocks smaller than the item count
    monkeypatch.setattr(layers.cf, "PAIRS_PER_BLOCK", 8)
    assert torch.allclose(m.score_all({"user": U})[:, 1:], every_pair(m, U), atol=1e-5)
    with pytest.raises(ValueError, match="even first entry"):
        NCFMLP(SCHEMA, layers=[7, 4])
    # from a config, the same refusal is a ConfigError naming the model (one line, exit 2)
    from omegaconf import OmegaConf

    from recbench.models import build_model

    cfg = OmegaConf.create({"_target_": "recbench.models.neumf.NeuMF", "layers": [64]})
    with pytest.raises(ConfigError, match=r"NeuMF refused its settings: layers must be"):
        build_model(cfg, SCHEMA)


def test_neumf_fuses_gmf_and_mlp_in_one_output_layer():
    m = randomise(NeuMF(SCHEMA, dim=3, layers=[8, 4, 2]))
    phi_gmf = m.gmf_user.weight[U] * m.gmf_item.weight[I]  # eq. 11
    z = torch.cat([m.mlp_user.weight[U], m.mlp_item.weight[I]], dim=1)
    for layer in m.tower.layers:
        z = F.relu(z @ layer.weight.T + layer.bias)
    want = torch.cat([phi_gmf, z], dim=1) @ m.out.weight[0] + m.out.bias  # eq. 12
    assert torch.allclose(m({"user": U, "item": I}), want, atol=1e-5)
    assert torch.allclose(m.score_all({"user": U})[:, 1:], every_pair(m, U), atol=1e-5)


def test_tower_dropout_drops_hidden_units_in_training_only():
    plain = randomise(NeuMF(SCHEMA, dim=3, layers=[8, 4, 2]))
    dropped = randomise(NeuMF(SCHEMA, dim=3, layers=[8, 4, 2], dropout=0.5))
    batch = {"user": U, "item": I}
    plain.eval(), dropped.eval()
    assert torch.equal(plain(batch), dropped(batch))  # evaluation never drops
    assert torch.equal(plain.score_all({"user": U}), dropped.score_all({"user": U}))
    dropped.train()
    torch.manual_seed(0)
    z = torch.cat([dropped.mlp_user.weight[U], dropped.mlp_item.weight[I]], dim=1)
    for layer in dropped.tower.layers:  # inverted dropout after each hidden ReLU
        z = F.dropout(F.relu(z @ layer.weight.T + layer.bias), 0.5, training=True)
    phi = dropped.gmf_user.weight[U] * dropped.gmf_item.weight[I]  # GMF is never dropped
    want = torch.cat([phi, z], dim=1) @ dropped.out.weight[0] + dropped.out.bias
    torch.manual_seed(0)
    assert torch.allclose(dropped(batch), want, atol=1e-5)
    assert not torch.allclose(dropped(batch), plain(batch))
    with pytest.raises(ValueError, match="dropout"):
        NCFMLP(SCHEMA, layers=[8, 4], dropout=1.0)


def fake_run(tmp_path, name: str, model: torch.nn.Module):
    """A finished run directory as `recbench train` leaves it: metrics.json naming the best
    checkpoint, whose state dict holds the task's ``model.`` weights."""
    run = tmp_path / name
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "best-3.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    (run / "metrics.json").write_text(json.dumps({"checkpoint": str(ckpt)}))
    return run


def test_pretrained_neumf_loads_gmf_and_mlp_with_an_alpha_weighted_output(tmp_path):
    gmf = randomise(GMF(SCHEMA, dim=3), seed=1)
    mlp = randomise(NCFMLP(SCHEMA, layers=[8, 4, 2]), seed=2)
    runs = {"gmf": str(fake_run(tmp_path, "g", gmf)), "mlp": str(fake_run(tmp_path, "m", mlp))}
    alpha = 0.3
    m = NeuMF(SCHEMA, dim=3, layers=[8, 4, 2], pretrained={**runs, "alpha": alpha})
    assert torch.equal(m.gmf_user.weight, gmf.user.weight)
    assert torch.equal(m.mlp_item.weight, mlp.item.weight)
    assert torch.equal(m.tower.layers[1].weight, mlp.tower.layers[1].weight)
    h = torch.cat([alpha * gmf.out.weight, (1 - alpha) * mlp.out.weight], dim=1)
    assert torch.allclose(m.out.weight, h)
    assert torch.allclose(m.out.bias, alpha * gmf.out.bias + (1 - alpha) * mlp.out.bias)
    # so the initial NeuMF is exactly α·GMF + (1 − α)·MLP on every pair
    batch = {"user": U, "item": I}
    with torch.no_grad():
        assert torch.allclose(m(batch), alpha * gmf(batch) + (1 - alpha) * mlp(batch), atol=1e-5)


def test_pretrained_neumf_refuses_missing_or_mismatched_parts(tmp_path):
    gmf = fake_run(tmp_path, "g", GMF(SCHEMA, dim=4))
    mlp = fake_run(tmp_path, "m", NCFMLP(SCHEMA, layers=[8, 4, 2]))
    with pytest.raises(ConfigError, match="model.dim"):
        NeuMF(SCHEMA, dim=3, layers=[8, 4, 2], pretrained={"gmf": str(gmf), "mlp": str(mlp)})
    with pytest.raises(ConfigError, match="needs both"):
        NeuMF(SCHEMA, pretrained={"gmf": None, "mlp": None, "from_models": {"gmf": "gmf"}})
    with pytest.raises(ConfigError, match="no finished run"):
        NeuMF(SCHEMA, pretrained={"gmf": str(tmp_path / "nope"), "mlp": str(mlp)})
    # the parts swapped: the message names the part and the model its run must be
    with pytest.raises(ConfigError) as swapped:
        NeuMF(SCHEMA, dim=4, layers=[8, 4, 2], pretrained={"gmf": str(gmf), "mlp": str(gmf)})
    assert str(swapped.value).startswith(
        f"model.pretrained.mlp={gmf} is not a run of model=ncf_mlp: its weights have no 'tower."
    )
    assert "recbench train task=topk model=ncf_mlp" in str(swapped.value)
    with pytest.raises(ConfigError, match=f"model.pretrained.gmf={gmf}: its user.weight has"):
        NeuMF(SCHEMA, dim=3, layers=[8, 4, 2], pretrained={"gmf": str(gmf), "mlp": str(mlp)})
