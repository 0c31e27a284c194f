"""Reading a model's test logits against the synthetic world's planted terms."""

from __future__ import annotations

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from recbench.cli import config_dir
from recbench.data.pipeline import prepare
from recbench.planted import TERMS, capture, planted_terms, split_frame


def small_world(*overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["dataset.world.n_users=150", *overrides])
    return cfg.dataset


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def test_rebuilt_test_rows_are_the_prepared_ones_and_terms_add_up():
    dataset = small_world()
    frame = split_frame(dataset)
    test = prepare(dataset, log=lambda *_: None).splits["test"]
    assert frame.height == len(test["label"])
    np.testing.assert_array_equal(frame["label"].to_numpy(), test["label"].numpy())
    np.testing.assert_allclose(frame["oracle_p"].to_numpy(), test["oracle"].numpy(), rtol=1e-6)
    terms = planted_terms(frame)
    total = sum(terms[t] for t in (*TERMS, "rest"))
    np.testing.assert_allclose(total, logit(frame["oracle_p"].to_numpy()), atol=1e-9)
    assert all(np.std(terms[t]) > 0.05 for t in TERMS)  # every part varies in the default world


def test_capture_separates_the_terms_a_score_reads_from_those_it_ignores():
    terms = planted_terms(split_frame(small_world()))
    truth = capture(sum(terms[t] for t in (*TERMS, "rest")), terms)
    assert all(v == pytest.approx(1.0, abs=1e-9) for v in truth.values())  # the oracle reads all
    rng = np.random.default_rng(0)
    n = len(terms["rest"])
    # a score that reads the pairwise and drift parts (scaled, with noise) and nothing else
    partial = 0.5 * terms["pairwise"] + 2.0 * terms["drift"] + 0.3 * rng.standard_normal(n)
    got = capture(partial, terms)
    assert got["pairwise"] > 0.3 and got["drift"] > 0.3
    assert abs(got["attention"]) < 0.1 and abs(got["higher_order"]) < 0.1
    # reading more of a part scores higher on it
    noisier = 0.5 * terms["pairwise"] + 2.0 * terms["drift"] + 3.0 * rng.standard_normal(n)
    assert capture(noisier, terms)["drift"] < got["drift"]


def test_a_term_switched_off_in_the_world_has_no_capture():
    frame = split_frame(small_world("dataset.world.attention=0.0"))
    terms = planted_terms(frame)
    got = capture(logit(frame["oracle_p"].to_numpy()), terms)
    assert np.isnan(got["attention"]) and got["drift"] == pytest.approx(1.0)
