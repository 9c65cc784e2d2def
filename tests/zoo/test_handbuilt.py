"""Hand-built bandit transformers implement their algorithms (ad/zoo/handbuilt.py).

Checked against ``algorithm_values``, a NumPy computation from the raw streams that never
looks at the weights: on random streams the model's argmax lies in the algorithm's set of
best actions (ties within 1e-6), and in closed loop its regret equals the algorithm's
within noise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from ad.evaluate import ad_rollout, eval_tasks
from ad.inputs import dummy_inputs
from ad.model import ADTransformer
from ad.zoo import handbuilt as hb
from ad.zoo.build import pseudo_regret

CASES = [(2, "greedy"), (2, "bonus"), (5, "greedy"), (5, "bonus")]


def _streams(num_arms: int, batch: int, steps: int, seed: int):
    """Random streams of three kinds: uniform pulls, pulls skewed to a per-stream
    favourite (long runs of one arm, few of others), and rewards at per-arm rates."""
    rng = np.random.default_rng(seed)
    third = batch // 3
    uniform = rng.integers(0, num_arms, (third, steps))
    prefs = rng.dirichlet(np.full(num_arms, 0.3), batch - third)
    skewed = np.stack([rng.choice(num_arms, steps, p=p) for p in prefs])
    action = np.concatenate([uniform, skewed])
    rates = rng.random((batch, num_arms))
    reward = (rng.random((batch, steps)) < np.take_along_axis(rates, action, 1)).astype(np.float32)
    prev_action = np.concatenate([np.full((batch, 1), num_arms), action[:, :-1]], 1)
    prev_reward = np.concatenate([np.zeros((batch, 1), np.float32), reward[:, :-1]], 1)
    return prev_action.astype(np.int32), prev_reward


def _logits(cfg, params, prev_action, prev_reward):
    inputs = dummy_inputs(cfg, *prev_action.shape)._replace(
        prev_action=jnp.asarray(prev_action), prev_reward=jnp.asarray(prev_reward))
    apply = jax.jit(lambda p, x: ADTransformer(cfg).apply({"params": p}, x, train=False))
    return np.asarray(apply(params, inputs))


@pytest.mark.parametrize("num_arms,algorithm", CASES)
def test_argmax_is_in_the_algorithms_best_set(num_arms, algorithm):
    cfg, params = hb.build(num_arms, algorithm)
    pa, pr = _streams(num_arms, 150, cfg.context, seed=num_arms)
    logits = _logits(cfg, params, pa, pr)
    best = hb.best_sets(hb.algorithm_values(pa, pr, num_arms, algorithm))
    chosen = logits.argmax(-1)
    in_set = np.take_along_axis(best, chosen[..., None], -1)[..., 0]
    single = best.sum(-1) == 1
    assert single.mean() > 0.5  # the check has teeth: most steps have one best arm
    assert in_set.mean() >= 0.999, in_set.mean()
    assert in_set[single].mean() >= 0.999, in_set[single].mean()
    # unpulled arms tie exactly: the model's logits for them are equal
    unpulled = np.isinf(hb.algorithm_values(pa, pr, num_arms, algorithm))
    rows = unpulled.sum(-1) >= 2
    tied = np.where(unpulled[rows], logits[rows], -np.inf)
    top = tied.max(-1, keepdims=True)
    assert np.all(np.where(unpulled[rows], np.abs(tied - top) < 1e-3, True))


def test_a_wrong_algorithm_fails_the_check():
    """Control: the greedy model disagrees with the bonus algorithm (the test can fail)."""
    cfg, params = hb.build(5, "greedy")
    pa, pr = _streams(5, 150, cfg.context, seed=7)
    chosen = _logits(cfg, params, pa, pr).argmax(-1)
    best = hb.best_sets(hb.algorithm_values(pa, pr, 5, "bonus"))
    in_set = np.take_along_axis(best, chosen[..., None], -1)[..., 0]
    assert in_set.mean() < 0.99


@pytest.mark.parametrize("num_arms,algorithm", [(2, "bonus"), (5, "greedy")])
def test_closed_loop_regret_equals_the_algorithms(num_arms, algorithm):
    """In context on held-out tasks (KV-cache decode, sampling at temperature 1): every
    action lies in the algorithm's best set given the model's own history, and the
    pseudo-regret equals the NumPy algorithm's within noise (3 standard errors)."""
    cfg, params = hb.build(num_arms, algorithm)
    env = envs.make("bernoulli-bandit", num_arms=num_arms)
    tasks = eval_tasks(env, "test", 400, jax.random.key(0))
    roll = ad_rollout(params, cfg, env, tasks, jax.random.key(1), 100)
    action, reward = np.asarray(roll.action), np.asarray(roll.reward)
    pa = np.concatenate([np.full((400, 1), num_arms), action[:, :-1]], 1)
    pr = np.concatenate([np.zeros((400, 1), np.float32), reward[:, :-1]], 1)
    best = hb.best_sets(hb.algorithm_values(pa, pr, num_arms, algorithm))
    assert np.take_along_axis(best, action[..., None], -1).mean() >= 0.995
    model = np.asarray(pseudo_regret(tasks.means, roll.action))
    ref_actions = hb.algorithm_rollout(np.asarray(tasks.means, np.float64), 100,
                                       np.random.default_rng(0), algorithm)
    ref = np.asarray(pseudo_regret(tasks.means, jnp.asarray(ref_actions)))
    se = np.sqrt(model.var(ddof=1) / len(model) + ref.var(ddof=1) / len(ref))
    assert abs(model.mean() - ref.mean()) < 3 * se, (model.mean(), ref.mean(), se)


def test_numpy_algorithm_by_hand():
    """algorithm_values on a hand-written stream: arm 0 pulled twice (1, 0), arm 1 once (1)."""
    pa = np.array([[2, 0, 0, 1]])
    pr = np.array([[0.0, 1.0, 0.0, 1.0]])
    v = hb.algorithm_values(pa, pr, 2, "greedy")
    assert np.all(np.isinf(v[0, 0])) and v[0, 1, 0] == 1.0 and np.isinf(v[0, 1, 1])
    assert v[0, 3, 0] == 0.5 and v[0, 3, 1] == 1.0
    b = hb.algorithm_values(pa, pr, 2, "bonus", bonus=0.5)
    assert b[0, 3, 0] == 0.5 + 0.5 / 3 and b[0, 3, 1] == 1.0 + 0.5 / 2
    assert hb.best_sets(v)[0, 3].tolist() == [False, True]
    assert hb.best_sets(v)[0, 0].tolist() == [True, True]


def test_handbuilt_models_load_like_zoo_models():
    import ad.zoo

    for num_arms, algorithm in CASES:
        model = ad.zoo.load(f"bandit{num_arms}-{algorithm}")
        _, params = hb.build(num_arms, algorithm)
        for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(params)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert model.config == hb.model_config(num_arms, algorithm)
