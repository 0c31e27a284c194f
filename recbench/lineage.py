"""The evolution graph of deep-learning recommenders, as data.

Each node is a model config name (``configs/model/<name>.yaml``) with its family, parents, paper,
the evolution rule that leads to it from its parents, and the one idea it adds. ``compare`` walks
the edges and reports each model against each parent.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Node:
    model: str
    title: str
    family: str
    parents: tuple[str, ...]
    paper: str
    rule: str  # root | deeper | crossing | combination | attention | evolution | cross-domain
    idea: str
    task: str = "ctr"


NODES: tuple[Node, ...] = (
    Node(
        "lr",
        "LR",
        "core",
        (),
        "McMahan et al., KDD 2013 (ad click prediction)",
        "root",
        "a weight per feature value: the linear baseline",
    ),
    Node(
        "fm",
        "FM",
        "core",
        ("lr",),
        "Rendle, ICDM 2010",
        "crossing",
        "every pairwise cross through inner products of latent vectors",
    ),
    Node(
        "mlp",
        "Embedding+MLP",
        "core",
        ("lr",),
        "Covington et al., RecSys 2016",
        "deeper",
        "dense embeddings concatenated and crossed by an MLP",
    ),
    Node(
        "deep_crossing",
        "Deep Crossing",
        "deeper",
        ("mlp",),
        "Shan et al., KDD 2016",
        "deeper",
        "residual units make the MLP deeper",
    ),
    Node(
        "pnn",
        "PNN",
        "crossing",
        ("mlp",),
        "Qu et al., ICDM 2016",
        "crossing",
        "a product layer (inner / outer) before the MLP",
    ),
    Node(
        "wide_deep",
        "Wide&Deep",
        "combination",
        ("lr", "mlp"),
        "Cheng et al., DLRS 2016",
        "combination",
        "joint training of a memorising wide part and a generalising deep part",
    ),
    Node(
        "dcn",
        "DCN",
        "combination",
        ("wide_deep",),
        "Wang et al., ADKDD 2017",
        "combination",
        "a cross network replaces the wide part: bounded-degree explicit crosses",
    ),
    Node(
        "dcn_v2",
        "DCN-v2",
        "combination",
        ("wide_deep",),
        "Wang et al., WWW 2021",
        "combination",
        "full-rank, low-rank or mixture-of-experts cross layers",
    ),
    Node(
        "deepfm",
        "DeepFM",
        "combination",
        ("wide_deep", "fm"),
        "Guo et al., IJCAI 2017",
        "combination",
        "an FM replaces the wide part and shares the deep part's embeddings",
    ),
    Node(
        "afm",
        "AFM",
        "combination",
        ("fm",),
        "Xiao et al., IJCAI 2017",
        "attention",
        "attention weights on FM's pairwise interactions",
    ),
    Node(
        "nfm",
        "NFM",
        "combination",
        ("fm",),
        "He & Chua, SIGIR 2017",
        "deeper",
        "bi-interaction pooling of FM's crosses, then an MLP",
    ),
    Node(
        "xdeepfm",
        "xDeepFM",
        "combination",
        ("deepfm",),
        "Lian et al., KDD 2018",
        "crossing",
        "a compressed interaction network: vector-wise explicit crosses",
    ),
    Node(
        "autoint",
        "AutoInt",
        "combination",
        ("mlp",),
        "Song et al., CIKM 2019",
        "attention",
        "multi-head self-attention learns which fields to cross",
    ),
    Node(
        "mlp_pooled",
        "BaseModel (pooled history)",
        "attention / sequence",
        ("mlp",),
        "Zhou et al., KDD 2018 (DIN's BaseModel)",
        "deeper",
        "the behaviour history, sum- or mean-pooled, as one more input",
    ),
    Node(
        "din",
        "DIN",
        "attention / sequence",
        ("mlp_pooled",),
        "Zhou et al., KDD 2018",
        "attention",
        "a local activation unit weighs each history item against the candidate",
    ),
    Node(
        "dien",
        "DIEN",
        "attention / sequence",
        ("din",),
        "Zhou et al., AAAI 2019",
        "evolution",
        "a GRU extracts interests and an attention-gated GRU follows their evolution",
    ),
)

BY_MODEL: dict[str, Node] = {n.model: n for n in NODES}


def node(model: str) -> Node:
    try:
        return BY_MODEL[model]
    except KeyError:
        raise KeyError(f"{model!r} is not in the lineage; known: {sorted(BY_MODEL)}") from None


def edges(models: list[str] | None = None) -> list[tuple[str, str]]:
    """(parent, child) pairs, restricted to ``models`` when given."""
    keep = set(models) if models is not None else set(BY_MODEL)
    return [(p, n.model) for n in NODES if n.model in keep for p in n.parents if p in keep]
