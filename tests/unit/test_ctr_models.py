"""Every CTR model config builds, trains end to end and can memorise a tiny batch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from recbench.lineage import BY_MODEL
from recbench.models.dcn_v2 import DCNv2
from recbench.models.layers import FeatureEmbedding
from recbench.models.pnn import PNN
from recbench.models.wide_deep import WideDeep
from recbench.testing import random_batch, toy_schema

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"
CTR_MODELS = (
    "lr",
    "fm",
    "mlp",
    "deep_crossing",
    "pnn",
    "wide_deep",
    "dcn",
    "dcn_v2",
    "deepfm",
    "afm",
    "nfm",
    "xdeepfm",
    "autoint",
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # on batches of 64 rows, syncing threads costs more than it saves (and a loaded machine
    # makes it much worse)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(name: str, **overrides: object) -> nn.Module:
    """Compose ``configs/model/<name>.yaml`` under a dataset that declares a wide cross."""
    cfg = OmegaConf.create({"dataset": {"wide_crosses": [["gender", "age"]]}})
    cfg.model = OmegaConf.load(CONFIGS / f"{name}.yaml")
    cfg.model.update(overrides)
    # the schema is a dataclass holding tensors: Hydra would turn it into a config if passed
    # through instantiate, so it goes to the partial instead
    return instantiate(cfg.model, _partial_=True)(schema=toy_schema())


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    return ((pos[:, None] > neg[None, :]).float().mean()).item()


def check_trains(model: nn.Module, steps: int = 150) -> None:
    schema = toy_schema()
    torch.manual_seed(0)
    batch = random_batch(schema, 32, seed=1)
    logits = model(batch)
    assert logits.shape == (32,)
    assert torch.isfinite(logits).all()
    F.binary_cross_entropy_with_logits(logits, batch["label"]).backward()
    tables = [m.table.weight for m in model.modules() if isinstance(m, FeatureEmbedding)]
    assert tables
    for w in tables:
        assert w.grad is not None and w.grad.abs().sum() > 0

    # memorise 64 rows with random labels
    model.zero_grad()
    batch = random_batch(schema, 64, seed=2)
    labels = torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(3)).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(model(batch), labels).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        logits = model(batch)
    loss = F.binary_cross_entropy_with_logits(logits, labels).item()
    assert loss < 0.1 or auc(logits, labels) == 1.0, f"loss {loss:.3f}"


def test_ctr_models_are_configs_in_the_lineage() -> None:
    for name in CTR_MODELS:
        assert (CONFIGS / f"{name}.yaml").is_file()
        assert name in BY_MODEL


@pytest.mark.parametrize("name", CTR_MODELS)
def test_config_builds_trains_and_overfits(name: str) -> None:
    # LR separates random labels only with large weights, and Adam moves a weight by at most
    # about lr per step: it gets more steps
    check_trains(build(name), steps=400 if name == "lr" else 150)


@pytest.mark.parametrize("product", ["inner", "outer", "both"])
def test_pnn_products(product: str) -> None:
    model = build("pnn", product=product)
    assert (model.inner is not None) == (product != "outer")
    assert (model.outer is not None) == (product != "inner")
    check_trains(model)


@pytest.mark.parametrize("cross", ["full", "low_rank", "mixture"])
@pytest.mark.parametrize("structure", ["stacked", "parallel"])
def test_dcn_v2_variants(cross: str, structure: str) -> None:
    check_trains(build("dcn_v2", cross=cross, structure=structure))


def test_bad_choices_raise() -> None:
    schema = toy_schema()
    with pytest.raises(ValueError, match="product"):
        PNN(schema, product="kernel")
    with pytest.raises(ValueError, match="structure"):
        DCNv2(schema, structure="serial")
    with pytest.raises(Exception, match="hiden"):  # a misspelled key is an error, not ignored
        build("deepfm", hiden=[8])


def test_wide_deep_unknown_cross_field_raises() -> None:
    with pytest.raises(ValueError, match="sparse") as err:
        WideDeep(toy_schema(), crosses=[["gender", "occupation"]])
    assert "occupation" in str(err.value) and "user_id" in str(err.value)
    with pytest.raises(ValueError, match="sparse"):  # a dense field has no values to cross
        WideDeep(toy_schema(), crosses=[["gender", "price"]])


def test_wide_deep_crosses_from_dataset_config() -> None:
    model = build("wide_deep")
    # exact cross: one weight per (gender, age) combination
    assert model.crosses.weight.num_embeddings == 4 * 9
    with torch.no_grad():
        model.crosses.weight.weight.copy_(torch.arange(36.0).unsqueeze(1))
    sparse = torch.tensor([[0, 0, g, a] for g in range(4) for a in range(9)])
    weights = model.crosses({"sparse": sparse})  # each combination reads its own row
    assert sorted(weights.tolist()) == list(range(36))

    cfg = OmegaConf.create({"dataset": {}, "model": OmegaConf.load(CONFIGS / "wide_deep.yaml")})
    no_crosses = instantiate(cfg.model, _partial_=True)(schema=toy_schema())
    assert no_crosses.crosses.num_crosses == 0
    check_trains(no_crosses)


def test_wide_deep_hashes_large_crosses() -> None:
    schema = toy_schema()
    model = WideDeep(schema, crosses=[["user_id", "item_id", "age"]], max_cross_vocab=50)
    assert model.crosses.weight.num_embeddings == 50  # 20·30·9 combinations > 50
    batch = random_batch(schema, 256)
    torch.nn.init.normal_(model.crosses.weight.weight)
    model(batch).sum().backward()
    touched = model.crosses.weight.weight.grad.squeeze(1) != 0
    assert touched.sum() > 25  # ids spread over the buckets and stay inside them


@pytest.mark.parametrize(
    ("name", "overrides", "match"),
    [
        ("mlp", {"hidden": [64, 0]}, "widths must be >= 1"),
        ("mlp", {"dropout": -0.1}, "dropout must be in"),
        ("din", {"dropout": -0.5}, "dropout must be in"),
        ("deep_crossing", {"hidden": [0]}, "inner width"),
        ("dcn", {"num_cross": -1}, "cross layers must be >= 0"),
        ("dcn_v2", {"num_cross": -1}, "cross layers must be >= 0"),
        ("dcn_v2", {"cross": "low_rank", "rank": 0}, "rank must be >= 1"),
        ("dcn_v2", {"cross": "mixture", "num_experts": 0}, "num_experts >= 1"),
        ("afm", {"attention_dim": 0}, "attention_dim must be >= 1"),
        ("xdeepfm", {"cin": [0]}, "feature map"),
        ("autoint", {"num_layers": -1}, "num_layers must be >= 0"),
        ("autoint", {"num_heads": 0}, "num_heads must be >= 1"),
        ("dien", {"gru_dim": 0}, "gru_dim must be >= 1"),
        ("dien", {"gru_dim": -3}, "gru_dim must be >= 1"),
        ("wide_deep", {"max_cross_vocab": 0}, "max_cross_vocab must be >= 1"),
    ],
)
def test_out_of_range_settings_are_refused_in_one_line(name, overrides, match) -> None:
    """Each of these once trained silently as another model (a constant MLP, no dropout, a
    uniform attention, DIEN's GRU at the item size for 0) or failed with a traceback."""
    from recbench.errors import ConfigError
    from recbench.models import build_model

    cfg = OmegaConf.create({"dataset": {"wide_crosses": [["gender", "age"]]}})
    cfg.model = OmegaConf.load(CONFIGS / f"{name}.yaml")
    cfg.model.update(overrides)
    with pytest.raises(ConfigError, match=match):
        build_model(cfg.model, toy_schema())
