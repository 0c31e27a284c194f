"""The embedded synthetic world: a seeded, offline, MovieLens-like event log whose click
probabilities come from a planted model, so every run can report the oracle AUC beside its own.

Users have demographics (age bucket, gender, occupation) and a preference over genres; items have
1-3 genres and a unit latent vector near the centroids of their genres. A user's timeline is a run
of sessions; each session has a focus genre (drawn from the user's preference), and the user's
latent interest ``z`` moves toward that genre's centroid a step per event, plus a random walk: the
interest drifts. Each event is one impression: an item from global popularity, or from the focus
genre (the popularity-weighted candidate closest to ``z`` wins), so recent history carries the
current interest.

The click logit of an event is a sum of planted terms::

    first order   b0 + user bias + item bias + age, gender, occupation and genre biases
    pairwise      age×genre + gender×genre + occupation×genre (low rank) + user taste×genre
    higher order  a pure age×gender×genre interaction: every pairwise projection removed, so a
                  model of pairwise crosses only gets it through one free vector per user
    attention     w · Σ_j α_j s_j, s_j = <e_target, e_hist_j>, α = softmax(τ s) over the history
    drift         w · <e_target, z_user(t)>, the interest at the time of the event

Genre terms average over the item's genres, as a model pooling its genre embeddings sees them.
The history of an event is the items of the user's strictly earlier events (clicked or not), most
recent last, at most ``history_len``: what recbench's pipeline feeds models. The label is
Bernoulli(sigmoid(logit)); the frame keeps that probability as ``oracle_p``, and ablation oracles
(``ABLATIONS``) where one planted part is set to its mean over the frame (or, for
``pooled_history``, to the same similarity against the uniform mean of the history), the other
terms unchanged. An event without history has attention 0 (and pooled 0).

Timestamps are Unix seconds and strictly increase within a user: two events of one user never
share a timestamp, so ordering by time is unambiguous. Different users may share timestamps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

SUPPORTED_VERSIONS = (2,)

ABLATIONS: dict[str, str] = {
    "oracle_p_no_pairwise": (
        "pairwise crosses (demographic×genre, user taste×genre) set to their mean"
    ),
    "oracle_p_no_higher_order": "the pure age×gender×genre interaction set to its mean",
    "oracle_p_no_history": "both history terms (attention and drift) set to their means",
    "oracle_p_pooled_history": (
        "attention over the history replaced by similarity to the mean history"
    ),
    "oracle_p_no_drift": "the current-interest (drift) term set to its mean",
}


@dataclass(frozen=True)
class WorldParams:
    """Every knob of the world. The defaults are the frozen version-2 world: tests rely on them."""

    version: int = 2
    # population
    n_users: int = 2000
    n_items: int = 1000
    events_per_user: int = 100  # mean; each user gets uniform [mean·(1-spread), mean·(1+spread)]
    events_spread: float = 0.5
    n_genres: int = 18
    n_ages: int = 7
    n_occupations: int = 21
    male_share: float = 0.6
    genre_concentration: float = 1.0  # Dirichlet scale of a user's genre preference; small: few
    # item latent space
    latent_dim: int = 16
    item_noise: float = 0.5  # item vector = mean of its genre centroids + this much noise
    popularity_exponent: float = 0.8  # Zipf exponent of item popularity
    # timeline and exposure
    session_len: float = 8.0  # mean events per session
    switch_prob: float = 0.7  # chance a new session changes the focus genre
    interest_pull: float = 0.3  # per-event step of the interest toward the focus genre centroid
    interest_noise: float = 0.3  # per-event random walk of the interest
    popularity_mix: float = 0.4  # share of impressions drawn from global popularity
    n_candidates: int = 10  # focus-genre candidates per impression; closest to the interest wins
    exposure_sharpness: float = 5.0  # how strongly the interest picks among the candidates
    start_time: int = 946_684_800  # 2000-01-01 UTC
    span_days: float = 700.0  # users start uniformly within this span
    session_gap_hours: float = 36.0  # mean gap between sessions
    event_gap_seconds: float = 90.0  # mean gap between events of a session
    # planted click model
    base_ctr: float = 0.28  # b0 is solved so that the mean click probability is this
    user_bias: float = 0.2  # std of each first-order table
    item_bias: float = 0.2
    demo_bias: float = 0.1
    genre_bias: float = 0.2
    pairwise: float = 0.4  # std of the age×genre, gender×genre and occupation×genre tables
    taste: float = 0.2  # std of the user taste × genre term
    taste_rank: int = 4  # rank of the user taste × genre matrix
    higher_order: float = 1.6  # std of the pure 3-way term
    history_len: int = 50  # what the attention term sees: the last 50 strictly earlier events
    attention: float = 6.5  # weight of the attention term
    attention_temperature: float = 10.0  # softmax sharpness: high → the best-matching items
    drift: float = 1.8  # weight of the current-interest term


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _categorical(rng: np.random.Generator, probs: np.ndarray, size: int) -> np.ndarray:
    return np.searchsorted(np.cumsum(probs), rng.random(size) * probs.sum(), side="right").clip(
        max=len(probs) - 1
    )


def _rowwise_categorical(rng: np.random.Generator, cum: np.ndarray) -> np.ndarray:
    """One draw per row of a (R, K) row-normalised cumulative probability table."""
    u = rng.random(cum.shape[0])[:, None]
    return np.minimum((cum < u).sum(axis=1), cum.shape[1] - 1)


def _center(table: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """Subtract the weighted mean along ``axis``: removes every component constant along it."""
    w = np.expand_dims(weights / weights.sum(), [a for a in range(table.ndim) if a != axis])
    return table - (table * w).sum(axis=axis, keepdims=True)


def _solve_bias(rest: np.ndarray, target: float) -> float:
    """b0 such that mean(sigmoid(b0 + rest)) == target (bisection; monotone in b0)."""
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _sigmoid(mid + rest).mean() < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _streams(seed: int) -> list[np.random.Generator]:
    # independent streams (items, users, model, timeline, labels), so a change in one stage
    # does not reshuffle the others
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)]


def _items(p: WorldParams, rng: np.random.Generator) -> tuple:
    """Item genres, genre weights (I, K), genre frequencies (K,), genre centroids (K, d),
    unit item vectors (I, d) and popularity (I,)."""
    I, K, d = p.n_items, p.n_genres, p.latent_dim
    genre_freq = rng.gamma(2.0, 1.0, K)
    genre_freq /= genre_freq.sum()
    n_gen = np.minimum(_categorical(rng, np.array([0.5, 0.35, 0.15]), I) + 1, K)
    keys = np.log(genre_freq) + rng.gumbel(size=(I, K))  # Gumbel top-k: draws w/o replacement
    order = np.argsort(-keys, axis=1)
    item_genres = [np.sort(order[i, : n_gen[i]]) for i in range(I)]
    gmix = np.zeros((I, K))  # rows sum to 1: averaging weights over an item's genres
    for i, g in enumerate(item_genres):
        gmix[i, g] = 1.0 / len(g)
    centroids = _unit(rng.standard_normal((K, d)))
    emb = _unit(gmix @ centroids + p.item_noise * rng.standard_normal((I, d)) / np.sqrt(d))
    pop = (1.0 + rng.permutation(I)) ** -p.popularity_exponent
    pop /= pop.sum()
    return item_genres, gmix, genre_freq, centroids, emb, pop


def item_vectors(params: WorldParams, seed: int) -> np.ndarray:
    """The unit latent vectors (n_items, latent_dim) of the world ``generate(params, seed)``
    builds; row ``item_id - 1``. The attention and drift terms are inner products of these."""
    return _items(params, _streams(seed)[0])[4]


def generate(params: WorldParams, seed: int) -> pl.DataFrame:
    """One row per impression, sorted by user then time. See the module docstring for the model.

    Columns: user_id, item_id, timestamp, age, gender, occupation, genres (list), label,
    oracle_p and one column per entry of ``ABLATIONS``. Ids start at 1; age, gender, occupation
    and genres are codes from 0.
    """
    if params.version not in SUPPORTED_VERSIONS:
        raise ValueError(
            f"unknown synthetic world version {params.version}; supported: {SUPPORTED_VERSIONS}"
        )
    p = params
    r_items, r_users, r_model, r_time, r_label = _streams(seed)
    U, I, K, d = p.n_users, p.n_items, p.n_genres, p.latent_dim
    item_genres, gmix, genre_freq, centroids, emb, pop = _items(p, r_items)
    sim = emb @ emb.T  # (I, I) cosine similarity

    # --- users ---
    age_p = r_users.dirichlet(np.full(p.n_ages, 4.0))
    occ_p = r_users.dirichlet(np.full(p.n_occupations, 2.0))
    age = _categorical(r_users, age_p, U)
    gender = (r_users.random(U) < p.male_share).astype(np.int64)
    occ = _categorical(r_users, occ_p, U)
    pref = r_users.dirichlet(p.genre_concentration * K * genre_freq + 1e-3, U)  # (U, K)
    pref_cum = np.cumsum(pref, axis=1)
    n_ev = r_users.integers(
        max(1, round(p.events_per_user * (1 - p.events_spread))),
        round(p.events_per_user * (1 + p.events_spread)) + 1,
        U,
    )
    T = int(n_ev.max())

    # --- planted tables ---
    b_user = p.user_bias * r_model.standard_normal(U)
    logpop = np.log(pop)
    b_item = p.item_bias * (
        0.5 * (logpop - logpop.mean()) / logpop.std() + np.sqrt(0.75) * r_model.standard_normal(I)
    )
    b_age = p.demo_bias * r_model.standard_normal(p.n_ages)
    b_gender = p.demo_bias * r_model.standard_normal(2)
    b_occ = p.demo_bias * r_model.standard_normal(p.n_occupations)
    b_genre = p.genre_bias * r_model.standard_normal(K)
    t_age = p.pairwise * r_model.standard_normal((p.n_ages, K))
    t_gender = p.pairwise * r_model.standard_normal((2, K))
    t_occ = (
        p.pairwise
        * r_model.standard_normal((p.n_occupations, 3))
        @ r_model.standard_normal((3, K))
        / np.sqrt(3)
    )
    taste = (
        p.taste
        * r_model.standard_normal((U, p.taste_rank))
        @ r_model.standard_normal((p.taste_rank, K))
        / np.sqrt(p.taste_rank)
    )
    # pure 3-way part of a random table: centred along every axis under the population weights,
    # so every age×gender, age×genre and gender×genre projection (and lower) is zero
    gender_p = np.array([1 - p.male_share, p.male_share])
    h = r_model.standard_normal((p.n_ages, 2, K))
    for axis, w in enumerate((age_p, gender_p, genre_freq)):
        h = _center(h, w, axis)
    wts = age_p[:, None, None] * gender_p[None, :, None] * genre_freq[None, None, :]
    h *= p.higher_order / np.sqrt((wts * h**2).sum())

    # --- timelines: sessions, drifting interest, impressions ---
    # focus-genre item lists flattened into one cumulative table: genre k covers (k, k+1]
    members = [np.flatnonzero(gmix[:, k] > 0) for k in range(K)]
    flat_items = np.concatenate(members)
    flat_cum = np.concatenate(
        [k + np.cumsum(pop[m]) / pop[m].sum() if len(m) else [] for k, m in enumerate(members)]
    )
    empty = np.array([len(m) == 0 for m in members])
    pop_cum = np.cumsum(pop)

    items = np.zeros((U, T), dtype=np.int64)
    drift_raw = np.zeros((U, T))
    gaps = np.zeros((U, T))
    focus = _rowwise_categorical(r_time, pref_cum)
    z = _unit(centroids[focus] + p.interest_noise * r_time.standard_normal((U, d)) / np.sqrt(d))
    for t in range(T):
        new_session = r_time.random(U) < (1.0 / p.session_len if t > 0 else 1.0)
        switch = new_session & (r_time.random(U) < p.switch_prob)
        focus = np.where(switch, _rowwise_categorical(r_time, pref_cum), focus)
        noise = r_time.standard_normal((U, d)) / np.sqrt(d)
        z = _unit(z + p.interest_pull * (centroids[focus] - z) + p.interest_noise * noise)
        # candidates from the focus genre, weighted by popularity; closest to z (with noise) wins
        u = focus[:, None] + r_time.random((U, p.n_candidates))
        cand = flat_items[np.searchsorted(flat_cum, u).clip(max=len(flat_items) - 1)]
        score = p.exposure_sharpness * np.einsum("ucd,ud->uc", emb[cand], z)
        pick = cand[np.arange(U), np.argmax(score + r_time.gumbel(size=score.shape), axis=1)]
        from_pop = (r_time.random(U) < p.popularity_mix) | empty[focus]
        popular = np.searchsorted(pop_cum, r_time.random(U)).clip(max=I - 1)
        items[:, t] = np.where(from_pop, popular, pick)
        drift_raw[:, t] = np.einsum("ud,ud->u", emb[items[:, t]], z)
        gaps[:, t] = np.where(
            new_session,
            r_time.exponential(p.session_gap_hours * 3600.0, U),
            r_time.exponential(p.event_gap_seconds, U),
        )
    start = p.start_time + r_time.random(U) * p.span_days * 86400.0
    # each gap is at least one second: timestamps strictly increase within a user
    stamps = np.floor(start)[:, None].astype(np.int64) + np.cumsum(
        np.floor(gaps).astype(np.int64) + 1, axis=1
    )

    # --- history terms: the last history_len strictly earlier events ---
    att_raw = np.zeros((U, T))
    pool_raw = np.zeros((U, T))
    for t in range(1, T):
        lo = max(0, t - p.history_len)
        s = sim[items[:, lo:t], items[:, t : t + 1]]  # (U, L) similarity of history to target
        a = np.exp(p.attention_temperature * (s - s.max(axis=1, keepdims=True)))
        att_raw[:, t] = (a * s).sum(axis=1) / a.sum(axis=1)
        pool_raw[:, t] = s.mean(axis=1)

    # --- flatten to events and assemble the logit ---
    valid = np.arange(T)[None, :] < n_ev[:, None]
    uid = np.broadcast_to(np.arange(U)[:, None], (U, T))[valid]
    iid = items[valid]
    a_, g_, o_ = age[uid], gender[uid], occ[uid]
    gm = gmix[iid]  # (N, K)
    first = b_user[uid] + b_item[iid] + b_age[a_] + b_gender[g_] + b_occ[o_] + gm @ b_genre
    pair = (gm * (t_age[a_] + t_gender[g_] + t_occ[o_] + taste[uid])).sum(axis=1)
    higher = (gm * h[a_, g_]).sum(axis=1)
    # the first event has no history: its attention terms are 0 (neutral)
    att = p.attention * att_raw[valid]
    pooled = p.attention * pool_raw[valid]
    drift = p.drift * drift_raw[valid]
    rest = first + pair + higher + att + drift
    b0 = _solve_bias(rest, p.base_ctr)
    logit = b0 + rest
    oracle = _sigmoid(logit)
    label = (r_label.random(len(oracle)) < oracle).astype(np.int64)

    genres_series = pl.Series("genres", [g.tolist() for g in item_genres], dtype=pl.List(pl.Int64))
    return pl.DataFrame(
        {
            "user_id": uid + 1,
            "item_id": iid + 1,
            "timestamp": stamps[valid],
            "age": a_,
            "gender": g_,
            "occupation": o_,
            "genres": genres_series.gather(iid),
            "label": label,
            "oracle_p": oracle,
            "oracle_p_no_pairwise": _sigmoid(logit - pair + pair.mean()),
            "oracle_p_no_higher_order": _sigmoid(logit - higher + higher.mean()),
            "oracle_p_no_history": _sigmoid(logit - att - drift + att.mean() + drift.mean()),
            "oracle_p_pooled_history": _sigmoid(logit - att + pooled),
            "oracle_p_no_drift": _sigmoid(logit - drift + drift.mean()),
        },
        schema_overrides={
            c: pl.Int64 for c in ("user_id", "item_id", "timestamp", "age", "gender", "occupation")
        },
    )


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact ROC AUC, ties counted as one half (Mann-Whitney U with average ranks)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative labels")
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    # average 1-based rank of each run of equal scores
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def oracle_aucs(frame: pl.DataFrame) -> dict[str, float]:
    """AUC of ``oracle_p`` and of every ablation column present in ``frame`` against ``label``."""
    labels = frame["label"].to_numpy()
    cols = ["oracle_p", *(c for c in ABLATIONS if c in frame.columns)]
    return {c: auc(frame[c].to_numpy(), labels) for c in cols}
