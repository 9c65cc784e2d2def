"""Tests of the JAX environment suite: contract, hand-computed dynamics, exact optima.

Every registered env gets the generic checks (determinism, shapes/dtypes against its
observation spec, jit + vmap over tasks, ``lax.scan`` rollout == Python loop of
``env.step``); each family then gets hand-computed trajectories, its task split, and
its exact ``optimal_return`` checked against hand values, an independent dynamic
program and rollouts of ``optimal_action``.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs.bandits import BanditParams
from envs.darkroom import DarkRoomParams
from envs.key_to_door import KeyToDoorParams, KeyToDoorState

ALL = [n for n in envs.registered() if not n.startswith("minigrid-")]  # MiniGrid: test_minigrid*.py
KEY = jax.random.key(0)


def i32(*xs):
    return jnp.asarray(xs, jnp.int32)


# ---------------------------------------------------------------------- registry, config
def test_registry_names():
    assert ALL == sorted(
        ["adversarial-bandit", "bernoulli-bandit", "darkroom", "darkroom-hard", "key-to-door"]
    )
    with pytest.raises(ValueError, match="registered: adversarial-bandit, bernoulli-bandit"):
        envs.make("dark-room")
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['sise'\]"):
        envs.make("darkroom", sise=5)


@pytest.mark.parametrize(
    "name, overrides, field",
    [
        ("darkroom", dict(size=0), "size"),
        ("darkroom", dict(size=-3), "size"),
        ("darkroom", dict(size=2.5), "size"),
        ("darkroom", dict(horizon=0), "horizon"),
        ("darkroom-hard", dict(horizon=-1), "horizon"),
        ("key-to-door", dict(size=0), "size"),
        ("key-to-door", dict(horizon=0), "horizon"),
        ("bernoulli-bandit", dict(num_arms=0), "num_arms"),
        ("bernoulli-bandit", dict(mean_low=0.8, mean_high=0.2), "mean_low must be <= mean_high"),
        ("bernoulli-bandit", dict(mean_high=1.5), "mean_high"),
        ("bernoulli-bandit", dict(mean_dist="gaussian"), "mean_dist"),
        ("bernoulli-bandit", dict(mean_dist="beta", beta_a=0.0), "beta_a"),
        ("adversarial-bandit", dict(num_arms=1), "num_arms"),
        ("adversarial-bandit", dict(parity_prob=1.5), "parity_prob"),
    ],
)
def test_bad_overrides_name_the_field(name, overrides, field):
    with pytest.raises(ValueError, match=field):
        envs.make(name, **overrides)


def test_bad_split():
    for name in ALL:
        with pytest.raises(ValueError, match="split"):
            envs.make(name).sample_params(KEY, "valid")


# ---------------------------------------------------------------------- generic contract
def _check_obs(env, obs, batch=()):
    spec = env.observation_spec()
    chex.assert_shape(obs, batch + spec.shape)
    chex.assert_type(obs, spec.dtype)
    assert (np.asarray(obs) >= 0).all() and (np.asarray(obs) < spec.num_values).all()


@pytest.mark.parametrize("name", ALL)
def test_determinism_shapes_dtypes(name):
    env = envs.make(name)
    k1, k2, k3 = jax.random.split(KEY, 3)
    params = env.sample_params(k1, "train")
    chex.assert_trees_all_equal(params, env.sample_params(k1, "train"))
    obs, state = env.reset(k2, params)
    _check_obs(env, obs)
    chex.assert_trees_all_equal((obs, state), env.reset(k2, params))
    out = env.step(k3, state, jnp.int32(1), params)
    chex.assert_trees_all_equal(out, env.step(k3, state, jnp.int32(1), params))
    obs, _, reward, terminated, truncated, info = out
    _check_obs(env, obs)
    _check_obs(env, info["final_obs"])
    chex.assert_shape([reward, terminated, truncated], ())
    chex.assert_type(reward, jnp.float32)
    chex.assert_type([terminated, truncated], bool)
    assert env.source_features(state).dtype == jnp.float32
    chex.assert_shape(env.optimal_return(params), ())
    chex.assert_type(env.optimal_action(k3, state, params), jnp.int32)


@pytest.mark.parametrize("name", ALL)
def test_jit_vmap_over_tasks_matches_single_task(name):
    env = envs.make(name)
    n = 4
    keys = jax.random.split(KEY, n)
    params = jax.jit(jax.vmap(env.sample_params, in_axes=(0, None)), static_argnums=1)(keys, "test")
    obs, state = jax.jit(jax.vmap(env.reset))(keys, params)
    _check_obs(env, obs, (n,))
    actions = jnp.arange(n, dtype=jnp.int32) % env.num_actions
    out = jax.jit(jax.vmap(env.step))(keys, state, actions, params)
    _check_obs(env, out[0], (n,))
    chex.assert_shape(out[2:5], (n,))
    for i in range(n):
        p_i = jax.tree.map(lambda x: x[i], params)
        s_i = jax.tree.map(lambda x: x[i], state)
        single = env.step(keys[i], s_i, actions[i], p_i)
        chex.assert_trees_all_equal(jax.tree.map(lambda x: x[i], out), single)
    opt = jax.jit(jax.vmap(env.optimal_return))(params)
    chex.assert_shape(opt, (n,))


@pytest.mark.parametrize("name", ALL)
def test_scan_rollout_equals_python_loop(name):
    # Long enough to cross episode ends of every env (Dark Room: 20 steps; a shorter
    # Key-to-Door so that it both truncates and, with luck, terminates).
    overrides = {"key-to-door": dict(size=3, horizon=8)}.get(name, {})
    env, num_steps = envs.make(name, **overrides), 45
    params = env.sample_params(jax.random.key(1), "train")
    actions = jax.random.randint(jax.random.key(2), (num_steps,), 0, env.num_actions)
    _, state0 = env.reset(jax.random.key(3), params)
    step_keys = jax.random.split(jax.random.key(4), num_steps)

    def body(state, x):
        key, action = x
        obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)
        return state, (obs, reward, terminated, truncated, info["final_obs"])

    _, scanned = jax.jit(lambda s: jax.lax.scan(body, s, (step_keys, actions)))(state0)

    step = jax.jit(env.step)
    state, looped = state0, []
    for t in range(num_steps):
        obs, state, reward, terminated, truncated, info = step(
            step_keys[t], state, actions[t], params
        )
        looped.append((obs, reward, terminated, truncated, info["final_obs"]))
    looped = jax.tree.map(lambda *xs: jnp.stack(xs), *looped)
    chex.assert_trees_all_equal(scanned, looped)
    assert bool(jnp.any(scanned[2] | scanned[3])), "rollout should cross an episode end"


# ---------------------------------------------------------------------- Dark Room
def _run(env, params, state, actions, key=KEY):
    """Python loop of env.step: per-step (obs, reward, terminated, truncated, final_obs)."""
    rows = []
    for t, a in enumerate(actions):
        obs, state, r, te, tr, info = env.step(
            jax.random.fold_in(key, t), state, jnp.int32(a), params
        )
        rows.append(
            (
                np.asarray(obs).tolist(),
                float(r),
                bool(te),
                bool(tr),
                np.asarray(info["final_obs"]).tolist(),
            )
        )
    return rows, state


def test_darkroom_hand_trajectory_walls_and_noop_pays():
    env = envs.make("darkroom")
    params = DarkRoomParams(goal=i32(5, 4))
    obs, state = env.reset(KEY, params)
    assert obs.tolist() == [4, 4]
    # right onto the goal (pays), no-op on it (pays again), right off it, left back on.
    rows, state = _run(env, params, state, [1, 0, 1, 2])
    assert [r[0] for r in rows] == [[5, 4], [5, 4], [6, 4], [5, 4]]
    assert [r[1] for r in rows] == [1.0, 1.0, 0.0, 1.0]
    # Walls: 7 more moves left stop at x = 0; 6 moves up stop at y = 0.
    rows, state = _run(env, params, state, [2] * 7 + [4] * 6)
    assert rows[5][0] == [0, 4] and rows[6][0] == [0, 4]
    assert rows[-2][0] == [0, 0] and rows[-1][0] == [0, 0]
    assert all(r[1] == 0.0 for r in rows)
    # 17 steps taken; steps 18, 19 are ordinary, step 20 truncates and resets to the centre.
    rows, state = _run(env, params, state, [3, 3, 3])
    assert [r[3] for r in rows] == [False, False, True]
    assert not any(r[2] for r in rows)
    assert rows[-1][0] == [4, 4] and rows[-1][4] == [0, 3]  # final_obs = true last cell
    assert int(state.t) == 0


def test_darkroom_centre_goal_noop_pays_every_step():
    env = envs.make("darkroom")
    params = DarkRoomParams(goal=i32(4, 4))
    _, state = env.reset(KEY, params)
    rows, _ = _run(env, params, state, [0] * 20)
    assert sum(r[1] for r in rows) == 20.0 == float(env.optimal_return(params))


def test_darkroom_hard_pays_once_per_episode():
    env = envs.make("darkroom-hard")
    params = DarkRoomParams(goal=i32(9, 8))
    _, state = env.reset(KEY, params)
    # on, stay, off, back on: only the first arrival pays.
    rows, state = _run(env, params, state, [1, 0, 1, 2] + [0] * 16)
    assert [r[1] for r in rows[:4]] == [1.0, 0.0, 0.0, 0.0]
    assert sum(r[1] for r in rows) == 1.0
    assert rows[-1][3] and rows[-1][0] == [8, 8]  # truncated at 20, back at the centre
    assert not bool(state.reached)  # reset for the next episode
    rows, _ = _run(env, params, state, [1, 0])
    assert [r[1] for r in rows] == [1.0, 0.0]


def test_darkroom_splits():
    for name, n_train, n_test in [("darkroom", 65, 16), ("darkroom-hard", 231, 58)]:
        env = envs.make(name)
        train = {tuple(g) for g in np.asarray(env.tasks("train").goal).tolist()}
        test = {tuple(g) for g in np.asarray(env.tasks("test").goal).tolist()}
        assert (len(train), len(test)) == (n_train, n_test)
        assert not train & test and len(train | test) == env.size**2
        assert all((x + 2 * y) % 5 == 0 for x, y in test)
        sampled = jax.vmap(env.sample_params, in_axes=(0, None))(jax.random.split(KEY, 200), "test")
        assert {tuple(g) for g in np.asarray(sampled.goal).tolist()} <= test


def test_darkroom_optimal_returns_hand_values():
    env = envs.make("darkroom")
    goals = jnp.asarray([[x, y] for y in range(9) for x in range(9)], jnp.int32)
    opt = jax.vmap(env.optimal_return)(DarkRoomParams(goal=goals))
    assert float(opt.mean()) == pytest.approx(1340 / 81, abs=1e-5)
    ret = lambda g: float(env.optimal_return(DarkRoomParams(goal=i32(*g))))  # noqa: E731
    assert ret((4, 4)) == 20.0  # centre: no-op from the first step
    assert ret((5, 4)) == 20.0  # d = 1
    assert ret((0, 0)) == 13.0  # d = 8: 21 - 8
    assert ret((8, 2)) == 15.0  # d = 6
    hard = envs.make("darkroom-hard")
    assert float(jax.vmap(hard.optimal_return)(hard.tasks("train")).min()) == 1.0


def _optimal_rollout_returns(env, params, start_state, num_steps):
    """Return of one episode under env.optimal_action (step_env, no auto-reset)."""

    def body(carry, _):
        state, ret, done = carry
        a = env.optimal_action(KEY, state, params)
        _, state, r, te, tr, _ = env.step_env(KEY, state, a, params)
        ret = ret + jnp.where(done, 0.0, r)
        return (state, ret, done | te | tr), None

    (_, ret, _), _ = jax.lax.scan(body, (start_state, 0.0, jnp.bool_(False)), None, num_steps)
    return ret


@pytest.mark.parametrize("name", ["darkroom", "darkroom-hard"])
def test_darkroom_optimal_action_achieves_optimal_return_every_task(name):
    env = envs.make(name)
    for split in ("train", "test"):
        tasks = env.tasks(split)

        def one(params):
            _, state = env.reset(KEY, params)
            return _optimal_rollout_returns(env, params, state, env.horizon)

        rets = jax.jit(jax.vmap(one))(tasks)
        np.testing.assert_array_equal(rets, jax.vmap(env.optimal_return)(tasks))


def _grid_dp(size, horizon, reward_fn, starts):
    """Exact finite-horizon optimum by backward induction over (cell, flag) states.

    ``reward_fn(cells_next, flag) -> (reward, new_flag, terminal)`` in NumPy, vectorised
    over tasks (leading axis) and cells. Returns the optimum from each start (flag 0).
    """
    moves = np.array([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]])
    cells = np.array([[x, y] for y in range(size) for x in range(size)])
    index = lambda c: c[..., 1] * size + c[..., 0]  # noqa: E731
    value = None
    for _ in range(horizon):
        best = None
        for m in moves:
            nxt = np.clip(cells + m, 0, size - 1)
            per_flag = []
            for flag in (0, 1):
                r, new_flag, term = reward_fn(nxt, flag)
                cont = (
                    0.0
                    if value is None
                    else np.take_along_axis(value[..., :], (index(nxt) * 2 + new_flag), axis=-1)
                )
                per_flag.append(r + np.where(term, 0.0, cont))
            q = np.stack(per_flag, -1).reshape(per_flag[0].shape[0], -1)  # (tasks, cells*2)
            best = q if best is None else np.maximum(best, q)
        value = best
    return value[:, index(starts) * 2]


def test_darkroom_optimal_return_matches_dynamic_program():
    # A small room and short horizon so that some goals are out of reach (optimum 0).
    for name in ("darkroom", "darkroom-hard"):
        env = envs.make(name, size=5, horizon=3)
        goals = np.array([[x, y] for y in range(5) for x in range(5)])
        pay_once = name == "darkroom-hard"

        def reward_fn(nxt, flag):
            on = np.all(nxt[None] == goals[:, None], -1)  # (tasks, cells)
            r = on & (flag == 0) if pay_once else on
            return r.astype(float), (on | bool(flag)).astype(int) if pay_once else on * 0, False

        dp = _grid_dp(5, 3, reward_fn, np.array([[2, 2]]))[:, 0]
        opt = jax.vmap(env.optimal_return)(DarkRoomParams(goal=jnp.asarray(goals, jnp.int32)))
        np.testing.assert_allclose(opt, dp)
        assert (dp == 0).any()


# ---------------------------------------------------------------------- Key-to-Door
K2D_PARAMS = KeyToDoorParams(key_cell=i32(2, 2), door_cell=i32(4, 2))


def _k2d_state(x, y, has_key=False, t=0):
    return KeyToDoorState(pos=i32(x, y), t=jnp.int32(t), has_key=jnp.bool_(has_key))


def test_key_to_door_door_before_key_then_key_then_door():
    env = envs.make("key-to-door")
    # From (3, 2): right onto the door without the key (nothing), left twice onto the
    # key (+1), right once more (nothing, key already held), right onto the door (+1, end).
    rows, state = _run(env, K2D_PARAMS, _k2d_state(3, 2), [1, 2, 2, 1, 1])
    assert [r[4] for r in rows] == [[4, 2], [3, 2], [2, 2], [3, 2], [4, 2]]
    assert [r[1] for r in rows] == [0.0, 0.0, 1.0, 0.0, 1.0]
    assert [r[2] for r in rows] == [False] * 4 + [True]
    assert not any(r[3] for r in rows)
    assert int(state.t) == 0 and not bool(state.has_key)  # auto-reset into a new episode


def test_key_to_door_info_has_key_and_source_features():
    env = envs.make("key-to-door")
    state = _k2d_state(3, 2)
    hk = []
    for a in [2, 0, 1]:
        _, state, _, _, _, info = env.step(KEY, state, jnp.int32(a), K2D_PARAMS)
        hk.append(bool(info["has_key"]))
        np.testing.assert_array_equal(env.source_features(state), [float(hk[-1])])
    assert hk == [True, True, True]
    assert env.source_features(_k2d_state(0, 0)).tolist() == [0.0]


def test_key_to_door_start_on_key_noop_picks_it_up_and_key_pays_once():
    env = envs.make("key-to-door")
    rows, _ = _run(env, K2D_PARAMS, _k2d_state(2, 2), [0, 0, 2, 1])
    assert [r[1] for r in rows] == [1.0, 0.0, 0.0, 0.0]


def test_key_to_door_shared_cell_pays_two_and_terminates():
    env = envs.make("key-to-door")
    params = KeyToDoorParams(key_cell=i32(5, 5), door_cell=i32(5, 5))
    rows, _ = _run(env, params, _k2d_state(5, 4), [3])
    assert rows[0][1:4] == (2.0, True, False) and rows[0][4] == [5, 5]
    assert float(env.optimal_return(params)) == 2.0


def test_key_to_door_truncates_at_50_and_resets_randomly():
    env = envs.make("key-to-door")
    rows, state = _run(env, K2D_PARAMS, _k2d_state(0, 8), [0] * 50)
    assert [r[3] for r in rows] == [False] * 49 + [True]
    assert not any(r[2] for r in rows) and sum(r[1] for r in rows) == 0.0
    assert rows[-1][4] == [0, 8]
    assert int(state.t) == 0 and not bool(state.has_key)
    # Opening the door on the very last step terminates (not truncates).
    rows, _ = _run(env, K2D_PARAMS, _k2d_state(3, 2, has_key=True, t=49), [1])
    assert rows[0][1:4] == (1.0, True, False)
    # Starts are uniform over all 81 cells.
    obs, _ = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(KEY, 8100), K2D_PARAMS)
    counts = np.bincount(np.asarray(obs[:, 1] * 9 + obs[:, 0]), minlength=81)
    assert counts.min() > 60 and counts.max() < 145  # mean 100


def test_key_to_door_split():
    env = envs.make("key-to-door")
    train, test = env.tasks("train"), env.tasks("test")
    as_set = lambda p: {tuple(r) for r in np.concatenate([p.key_cell, p.door_cell], 1).tolist()}  # noqa: E731
    tr, te = as_set(train), as_set(test)
    assert (len(tr), len(te)) == (5248, 1313)
    assert not tr & te and len(tr | te) == 9**4
    assert all((kx + 2 * ky + 3 * dx + 4 * dy) % 5 == 0 for kx, ky, dx, dy in te)
    sampled = jax.vmap(env.sample_params, in_axes=(0, None))(jax.random.split(KEY, 300), "train")
    assert as_set(sampled) <= tr


def _k2d_dp(env, tasks):
    keys, doors = np.asarray(tasks.key_cell), np.asarray(tasks.door_cell)

    def reward_fn(nxt, flag):
        on_key = np.all(nxt[None] == keys[:, None], -1)
        on_door = np.all(nxt[None] == doors[:, None], -1)
        picked = on_key & (flag == 0)
        has = picked | bool(flag)
        opened = on_door & has
        return picked + opened.astype(float), has.astype(int), opened

    starts = np.array([[x, y] for y in range(env.size) for x in range(env.size)])
    return _grid_dp(env.size, env.horizon, reward_fn, starts).mean(-1)


def test_key_to_door_optimal_return_hand_values_and_dynamic_program():
    env = envs.make("key-to-door", size=3, horizon=3)
    ret = lambda k, d: float(env.optimal_return(KeyToDoorParams(i32(*k), i32(*d))))  # noqa: E731
    # Key (0,0), door (2,2): the door is 4 steps from the key, never reachable in 3;
    # the key is reachable in <= 3 steps from every start but (2,2).
    assert ret((0, 0), (2, 2)) == pytest.approx(8 / 9)
    # Shared cell at the centre, horizon 1: the centre (no-op) and its 4 neighbours pay 2.
    assert float(
        envs.make("key-to-door", size=3, horizon=1).optimal_return(
            KeyToDoorParams(i32(1, 1), i32(1, 1))
        )
    ) == pytest.approx(10 / 9)
    # All 625 tasks of a 5x5 room with a binding horizon, against backward induction.
    small = envs.make("key-to-door", size=5, horizon=6)
    tasks = jax.tree.map(
        lambda a, b: jnp.concatenate([a, b]), small.tasks("train"), small.tasks("test")
    )
    opt = np.asarray(jax.vmap(small.optimal_return)(tasks))
    np.testing.assert_allclose(opt, _k2d_dp(small, tasks), rtol=1e-6)
    assert 0 < opt.min() < 2 and opt.max() == 2
    # At the defaults every task is worth exactly 2.
    default = envs.make("key-to-door")
    assert float(jax.vmap(default.optimal_return)(default.tasks("test")).min()) == 2.0


@pytest.mark.parametrize("size, horizon, split", [(5, 6, "train"), (5, 6, "test"), (9, 50, "test")])
def test_key_to_door_optimal_action_achieves_optimal_return(size, horizon, split):
    env = envs.make("key-to-door", size=size, horizon=horizon)
    tasks = env.tasks(split)
    starts = jnp.asarray([[x, y] for y in range(size) for x in range(size)], jnp.int32)

    def per_task(params):
        def from_start(pos):
            state = KeyToDoorState(pos=pos, t=jnp.int32(0), has_key=jnp.bool_(False))
            return _optimal_rollout_returns(env, params, state, horizon)

        return jax.vmap(from_start)(starts).mean()

    rets = jax.jit(jax.vmap(per_task))(tasks)
    np.testing.assert_allclose(rets, jax.vmap(env.optimal_return)(tasks), rtol=1e-6)


# ---------------------------------------------------------------------- bandits
def test_bernoulli_bandit_reward_frequencies_and_one_pull_episodes():
    env = envs.make("bernoulli-bandit", num_arms=3)
    params = BanditParams(means=jnp.asarray([0.1, 0.9, 0.5]))
    obs, state = env.reset(KEY, params)
    assert obs.tolist() == [0]
    n = 20_000
    keys = jax.random.split(KEY, n)
    for arm, mean in enumerate([0.1, 0.9, 0.5]):
        obs, _, r, te, tr, info = jax.vmap(env.step, in_axes=(0, None, None, None))(
            keys, state, jnp.int32(arm), params
        )
        assert abs(float(r.mean()) - mean) < 0.015  # 4+ standard errors
        assert bool(te.all()) and not bool(tr.any())
        assert (obs == 0).all() and (info["final_obs"] == 0).all()
    assert float(env.optimal_return(params)) == pytest.approx(0.9)
    assert int(env.optimal_action(KEY, state, params)) == 1


def test_bernoulli_bandit_task_streams():
    env = envs.make("bernoulli-bandit")
    train = env.sample_params(KEY, "train").means
    test = env.sample_params(KEY, "test").means
    assert train.shape == (5,) and not np.allclose(train, test)
    chex.assert_trees_all_equal(train, env.sample_params(KEY, "train").means)
    # Many arms of one task stand in for many tasks: arm means are i.i.d.
    narrow = envs.make("bernoulli-bandit", num_arms=500, mean_low=0.2, mean_high=0.3)
    means = narrow.sample_params(KEY).means
    assert float(means.min()) >= 0.2 and float(means.max()) <= 0.3
    assert float(means.mean()) == pytest.approx(0.25, abs=0.005)
    beta = envs.make("bernoulli-bandit", num_arms=2000, mean_dist="beta", beta_a=8.0, beta_b=2.0)
    assert float(beta.sample_params(KEY).means.mean()) == pytest.approx(0.8, abs=0.01)


def test_adversarial_bandit_parity_frequencies():
    env = envs.make("adversarial-bandit")
    keys = jax.random.split(KEY, 8000)
    # One compiled function for both splits (compiling a vmap over keys is the cost here).
    both = jax.jit(
        lambda k: [jax.vmap(env.sample_params, (0, None))(k, s) for s in ("train", "test")]
    )
    for means, (split, favoured) in zip(both(keys), [("train", 1), ("test", 0)]):
        means = means.means
        chex.assert_shape(means, (8000, 10))
        best = np.asarray(jnp.argmax(means, -1))
        frac = float(np.mean(best % 2 == favoured))
        assert abs(frac - 0.95) < 0.01, (split, frac)  # sd ~0.0024
        # Within the favoured parity the best arm is spread over all 5 arms.
        counts = np.bincount(best[best % 2 == favoured], minlength=10)[favoured::2]
        assert counts.min() > 0.8 * counts.mean()
        # Means are still U(0, 1) marginally: the swap only permutes them.
        assert float(means.mean()) == pytest.approx(0.5, abs=0.01)
