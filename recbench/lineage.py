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
    task: str = "ctr"  # the task whose lineage the node belongs to
    also: tuple[str, ...] = ()  # other tasks its model serves

    @property
    def tasks(self) -> tuple[str, ...]:
        """Every task the node's model serves (its class's ``tasks``), its lineage's first."""
        return (self.task, *self.also)


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
        "wide_only",
        "Wide (Wide&Deep's wide part)",
        "combination",
        ("lr",),
        "Cheng et al., DLRS 2016 (the wide part alone)",
        "crossing",
        "cross-product features memorised by a linear model: what Wide&Deep's wide side adds to LR",
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
    # ranking on implicit feedback (task=topk): Pop is the root every ranking model must beat
    Node(
        "pop",
        "Pop",
        "collaborative filtering",
        (),
        "item popularity (the non-personalised baseline of every top-K protocol)",
        "root",
        "every user gets the items with the most training interactions",
        "topk",
        ("next_item",),
    ),
    Node(
        "mf",
        "MF",
        "collaborative filtering",
        ("pop",),
        "Koren, Bell & Volinsky, IEEE Computer 2009",
        "crossing",
        "users and items share one latent factor space; the score is their inner product",
        "rating",
        ("topk",),
    ),
    Node(
        "mf_bce",
        "MF (BCE)",
        "collaborative filtering",
        ("mf",),
        "He et al., WWW 2017 (NCF's pointwise log loss)",
        "crossing",
        "the same factors trained as a classifier of positives against sampled negatives",
        "topk",
    ),
    Node(
        "mf_bpr",
        "MF (BPR)",
        "collaborative filtering",
        ("mf",),
        "Rendle et al., UAI 2009",
        "crossing",
        "the same factors trained to rank a positive above a sampled negative (pairwise loss)",
        "topk",
    ),
    Node(
        "gmf",
        "GMF",
        "collaborative filtering",
        ("mf",),
        "He et al., WWW 2017 (NCF, eq. 9)",
        "deeper",
        "a learnt weight per latent dimension on the element-wise product",
        "topk",
    ),
    Node(
        "ncf_mlp",
        "NCF MLP",
        "collaborative filtering",
        ("pop",),
        "He et al., WWW 2017 (NCF, eq. 10)",
        "deeper",
        "user and item embeddings concatenated and crossed by a ReLU tower",
        "topk",
    ),
    Node(
        "neumf",
        "NeuMF",
        "collaborative filtering",
        ("gmf", "ncf_mlp"),
        "He et al., WWW 2017 (NCF, eq. 11-12)",
        "combination",
        "GMF and the MLP tower with separate embeddings, fused by one output layer",
        "topk",
    ),
    Node(
        "neumf_pretrained",
        "NeuMF (pretrained)",
        "collaborative filtering",
        ("neumf",),
        "He et al., WWW 2017 (NCF, sec. 3.4.1)",
        "combination",
        "starts from a trained GMF and MLP, output layer [α h_GMF ; (1-α) h_MLP]",
        "topk",
    ),
    # rating prediction (task=rating): the autoencoder branch, against biased MF
    Node(
        "autorec",
        "I-AutoRec",
        "autoencoder",
        ("mf",),
        "Sedhain et al., WWW 2015",
        "deeper",
        "an autoencoder reconstructs an item's whole rating row through a sigmoid bottleneck",
        "rating",
    ),
    Node(
        "u_autorec",
        "U-AutoRec",
        "autoencoder",
        ("autorec",),
        "Sedhain et al., WWW 2015",
        "deeper",
        "the same autoencoder on user rows: a user's ratings of every item",
        "rating",
    ),
    # next-item recommendation (task=next_item): the NLP crossover, Pop as the root
    Node(
        "gru4rec",
        "GRU4Rec",
        "NLP crossover",
        ("pop",),
        "Hidasi et al., ICLR 2016",
        "evolution",
        "a recurrent network folds the item sequence into a state that predicts the next item",
        "next_item",
    ),
    Node(
        "sasrec",
        "SASRec",
        "NLP crossover",
        ("gru4rec",),
        "Kang & McAuley, ICDM 2018",
        "attention",
        "causal self-attention: every position attends directly to any earlier item",
        "next_item",
    ),
    Node(
        "sasrec_ce",
        "SASRec (full softmax)",
        "NLP crossover",
        ("sasrec",),
        "Klenitskiy & Vasilev, RecSys 2023 (SASRec with cross-entropy)",
        "evolution",
        "the same network trained with a softmax over the whole catalogue instead of one negative",
        "next_item",
    ),
    Node(
        "sasrec_sampled",
        "SASRec (sampled softmax)",
        "NLP crossover",
        ("sasrec",),
        "Jean et al., ACL 2015 (sampled softmax)",
        "evolution",
        "the same network trained against many shared sampled negatives",
        "next_item",
    ),
    Node(
        "bert4rec",
        "BERT4Rec",
        "NLP crossover",
        ("sasrec",),
        "Sun et al., CIKM 2019",
        "attention",
        "bidirectional attention trained by the Cloze task: masked items predicted from both sides",
        "next_item",
    ),
)

# reinforcement learning in the simulated news world (task=rl): baselines, greedy supervised
# rankers retrained on their own logs, then DRN built up one part at a time
NODES += (
    Node(
        "random_policy",
        "Random",
        "RL crossover",
        (),
        "the floor of every online protocol",
        "root",
        "a uniformly random list from the pool",
        "rl",
    ),
    Node(
        "most_popular",
        "Most popular",
        "RL crossover",
        ("random_policy",),
        "recent-CTR ranking, the news baseline",
        "root",
        "the candidates with the highest recent click-through rate",
        "rl",
    ),
    Node(
        "linucb",
        "LinUCB",
        "RL crossover",
        ("most_popular",),
        "Li et al., WWW 2010",
        "cross-domain",
        "a contextual bandit: a linear click model plus an upper confidence bonus",
        "rl",
    ),
    Node(
        "greedy_lr",
        "Greedy LR",
        "RL crossover",
        ("random_policy",),
        "McMahan et al., KDD 2013, retrained on the logged impressions",
        "root",
        "a supervised CTR model ranks greedily and never explores",
        "rl",
    ),
    Node(
        "greedy_fm",
        "Greedy FM",
        "RL crossover",
        ("greedy_lr",),
        "Rendle, ICDM 2010, retrained on the logged impressions",
        "crossing",
        "pairwise crosses in the greedy ranker",
        "rl",
    ),
    Node(
        "greedy_wide_deep",
        "Greedy Wide&Deep",
        "RL crossover",
        ("greedy_lr",),
        "Cheng et al., DLRS 2016, retrained on the logged impressions",
        "combination",
        "a wide and a deep part in the greedy ranker",
        "rl",
    ),
    Node(
        "greedy_deepfm",
        "Greedy DeepFM",
        "RL crossover",
        ("greedy_wide_deep", "greedy_fm"),
        "Guo et al., IJCAI 2017, retrained on the logged impressions",
        "combination",
        "an FM and an MLP on one embedding in the greedy ranker",
        "rl",
    ),
    Node(
        "drn_dn",
        "DRN: DN",
        "RL crossover",
        ("greedy_deepfm", "linucb"),
        "Zheng et al., WWW 2018 (DN)",
        "cross-domain",
        "a dueling Q-network V(s) + A(s, a) updated online, no future reward (γ = 0)",
        "rl",
    ),
    Node(
        "drn_ddqn",
        "DRN: DDQN",
        "RL crossover",
        ("drn_dn",),
        "Zheng et al., WWW 2018 (DDQN)",
        "cross-domain",
        "future reward: double-DQN targets from a periodically swapped target network",
        "rl",
    ),
    Node(
        "drn_ddqn_u",
        "DRN: DDQN + U",
        "RL crossover",
        ("drn_ddqn",),
        "Zheng et al., WWW 2018 (DDQN + U)",
        "cross-domain",
        "reward = click + β · user activeness from the survival model",
        "rl",
    ),
    Node(
        "drn_eg",
        "DRN: DDQN + U + EG",
        "RL crossover",
        ("drn_ddqn_u",),
        "Zheng et al., WWW 2018 (DDQN + U + EG)",
        "cross-domain",
        "ε-greedy exploration",
        "rl",
    ),
    Node(
        "drn",
        "DRN",
        "RL crossover",
        ("drn_ddqn_u", "drn_eg"),
        "Zheng et al., WWW 2018 (DDQN + U + DBGD)",
        "cross-domain",
        "dueling bandit gradient descent: an explore network, interleaved lists, a step "
        "toward the winner",
        "rl",
    ),
    Node(
        "oracle_myopic",
        "Oracle (myopic)",
        "RL crossover",
        (),
        "the planted click model's own top-K",
        "root",
        "the most expected clicks on this request, from the true click probabilities; blind "
        "to what a list does to the user's later visits",
        "rl",
    ),
    Node(
        "oracle_policy",
        "Oracle",
        "RL crossover",
        (),
        "the planted click model's top-K, looking ahead",
        "root",
        "the ceiling: the true click probabilities plus, to first order, the clicks each item "
        "adds to or takes from the user's later visits (fatigue, boredom)",
        "rl",
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
