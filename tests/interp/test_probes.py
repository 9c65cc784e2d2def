"""ad.interp.probes: planted signals are recovered, shuffled controls are not, the split
is by group, and probe_hook reads the token that predicts each step."""

import numpy as np
import pytest

from ad.interp.probes import group_folds, probe, probe_hook

G, P, D = 20, 30, 8  # groups (tasks), positions per group, feature width


def planted(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(G * P, D)).astype(np.float32)
    groups = np.repeat(np.arange(G) * 7 + 3, P)  # arbitrary ids, contiguous per group
    return rng, x, groups


def test_group_folds_never_split_a_group():
    groups = np.random.default_rng(1).integers(0, 13, 500)
    tests = group_folds(groups, 4, seed=2)
    assert tests.shape == (4, 500)
    np.testing.assert_array_equal(tests.sum(0), 1)  # k-fold: each position tested once
    for t in tests:
        assert not set(groups[t]) & set(groups[~t])
    one = group_folds(groups, test_fraction=0.25, seed=2)
    assert one.shape == (1, 500) and len(set(groups[one[0]])) == 3
    assert not set(groups[one[0]]) & set(groups[~one[0]])
    assert not np.array_equal(group_folds(groups, 4, seed=3), tests)  # seeded
    with pytest.raises(ValueError, match="folds=20"):
        group_folds(groups, 20)


def test_ridge_recovers_a_planted_linear_signal_and_the_control_does_not():
    rng, x, groups = planted()
    w = rng.normal(size=D)
    y = x @ w + 2.0 + 0.01 * rng.normal(size=len(x))
    res = probe(x, y, groups, "ridge", l2=1e-6)
    assert res.score > 0.999 and (res.fold_scores > 0.999).all()
    assert abs(res.control_score) < 0.1
    np.testing.assert_allclose(res.direction, w, atol=0.01)  # raw space, usable for steering
    np.testing.assert_allclose(res.intercept, 2.0, atol=0.01)
    np.testing.assert_allclose(res.predict(x), y, atol=0.05)
    # a signal that is only the group's identity does not transfer to held-out groups
    task = rng.normal(size=G)[np.searchsorted(np.unique(groups), groups)]
    leak = probe(np.concatenate([x, np.eye(G)[np.searchsorted(np.unique(groups), groups)]],
                                1), task, groups, "ridge")
    assert leak.score < 0.2


def test_logistic_recovers_planted_classes():
    rng, x, groups = planted(1)
    w = rng.normal(size=(D, 3)) * 3
    labels = np.array(["a", "b", "c"])[np.argmax(x @ w, 1)]
    res = probe(x, labels, groups, "logistic", l2=1e-4)
    assert res.score > 0.95, res.fold_scores
    assert res.control_score < 0.55
    assert res.direction.shape == (3, D) and list(res.classes) == ["a", "b", "c"]
    assert (res.predict(x) == labels).mean() > 0.95


def test_probe_hook_reads_the_predicting_token_and_reports_the_embedding_control():
    """An "oar"-shaped cache (3 tokens per step): the label is planted only in the third
    token of each step; the other tokens and hook_embed carry noise."""
    rng = np.random.default_rng(2)
    B, T, d = 8, 40, 6
    resid = rng.normal(size=(B, 3 * T, d)).astype(np.float32)
    labels = rng.normal(size=(B, T))
    resid[:, 2::3, 0] = labels
    acts = {"blocks.0.hook_resid_post": resid,
            "hook_embed": rng.normal(size=(B, 3 * T, d)).astype(np.float32)}
    mask = rng.random((B, T)) < 0.7
    res = probe_hook(acts, "blocks.0.hook_resid_post", labels, np.arange(B), mask, folds=4)
    assert res.score > 0.99 and res.embed_score < 0.2 and res.control_score < 0.2
    assert res.direction.shape == (d,) and np.argmax(np.abs(res.direction)) == 0
    with pytest.raises(KeyError, match="hook_resid_mid"):
        probe_hook(acts, "blocks.0.hook_resid_mid", labels, np.arange(B), mask)
