"""Unit tests of the JAX MiniGrid ports: hand-computed views, core functions fuzzed
against ``minigrid``'s own objects, exact optima, layout banks and splits, env API, and
the shortest-path demonstrator."""

from __future__ import annotations

import collections
import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from minigrid.core.grid import Grid
from minigrid.core.world_object import Ball, Box, Door, Goal, Key, Lava, Wall

import envs
from envs.minigrid import MINIGRID_ENVS, HideGoalObs
from envs.minigrid import core as C
from envs.minigrid import layouts as L
from envs.minigrid.envs import bank_to_params


def _empty_minigrid(size=9):
    raw = L.make_minigrid_env("MiniGrid-Empty-8x8-v0", {"size": size})
    raw.see_through_walls = False
    raw.reset(seed=0)
    return raw


def _state_from_minigrid(raw) -> C.GridState:
    carrying = np.array(raw.carrying.encode() if raw.carrying else C.EMPTY_CELL, np.uint8)
    return C.GridState(
        grid=jnp.asarray(raw.grid.encode().transpose(1, 0, 2)),
        agent_pos=jnp.asarray(np.asarray(raw.agent_pos), jnp.int32),
        agent_dir=jnp.int32(raw.agent_dir),
        carrying=jnp.asarray(carrying),
        step_count=jnp.int32(raw.step_count),
    )


# ---- hand-computed observations ----------------------------------------------------------


def test_empty_5x5_reset_view_by_hand():
    """Agent at (1, 1) facing +x in a 5x5 room; view cell (vx, vy) is world
    (1 + 6 - vy, vx - 2). Goal (3, 3) -> view (5, 4); row y = 0 wall -> vx = 2."""
    env = MINIGRID_ENVS["minigrid-empty-5x5"]()
    obs, _ = jax.jit(env.reset)(jax.random.key(0), env.sample_params(jax.random.key(0)))
    img = np.asarray(obs["image"])
    assert obs["direction"] == 0
    assert tuple(img[5, 4]) == (C.GOAL, 1, 0)  # green goal
    assert tuple(img[3, 6]) == (C.EMPTY, 0, 0)  # the agent's own cell: carries nothing
    assert tuple(img[4, 6]) == (C.EMPTY, 0, 0)  # (1, 2) floor
    for vx in (0, 1, 2, 6):  # outside the grid or the outer wall: grey walls
        assert tuple(img[vx, 6]) == (C.WALL, C.GREY, 0)
    assert (img[..., 0] != C.UNSEEN).all()  # Empty sees through walls
    assert (img[:, :2, 0] == C.WALL).all()  # x = 6, 7 lies beyond the east wall (x = 4)


def test_occlusion_by_hand():
    """Agent at (4, 7) facing up in a 9x9 room, a wall row at y = 6 (view row 5) with
    one blocker in the middle (view (3, 5)). A wall or a closed or locked door there
    hides everything beyond (view rows 0-4); an open door lets the view through and
    every cell beyond is seen. A lone blocker hides nothing: minigrid's process_vis
    lights the cell behind it from its see-through neighbours."""
    grid = np.tile(C.EMPTY_CELL, (9, 9, 1))
    grid[0, :] = grid[-1, :] = grid[:, 0] = grid[:, -1] = C.WALL_CELL
    pos, up, nothing = jnp.array([4, 7], jnp.int32), jnp.int32(3), jnp.asarray(C.EMPTY_CELL)
    view = jax.jit(C.gen_obs_image, static_argnums=(4,))
    for cell, hidden in (
        (C.WALL_CELL, True),
        (np.array([C.DOOR, 4, C.CLOSED], np.uint8), True),
        (np.array([C.DOOR, 4, C.LOCKED], np.uint8), True),
        (np.array([C.DOOR, 4, C.OPEN], np.uint8), False),
    ):
        g = grid.copy()
        g[6, :] = C.WALL_CELL
        g[6, 4] = cell
        img = np.asarray(view(jnp.asarray(g), pos, up, nothing, False))
        assert tuple(img[3, 5]) == tuple(cell)
        assert (img[:, 5, 0] != C.UNSEEN).all()  # the wall row itself is seen
        beyond = img[:, :5, 0]
        assert (beyond == C.UNSEEN).all() if hidden else (beyond == C.EMPTY).all()
        lone = grid.copy()
        lone[6, 4] = cell
        img = np.asarray(view(jnp.asarray(lone), pos, up, nothing, False))
        assert (img[:, :6, 0] != C.UNSEEN).all()


def test_process_vis_matches_minigrid_grid():
    """Random 7x7 views of walls / doors / floor: same mask as ``Grid.process_vis``."""
    rng = np.random.default_rng(0)
    vis = jax.jit(jax.vmap(C.process_vis))
    masks_ref, transparent = [], []
    for _ in range(300):
        g = Grid(7, 7)
        t = np.ones((7, 7), bool)
        for i in range(7):
            for j in range(7):
                u = rng.random()
                if u < 0.25:
                    g.set(i, j, Wall())
                    t[i, j] = False
                elif u < 0.35:
                    is_open = rng.random() < 0.5
                    g.set(i, j, Door("red", is_open=is_open))
                    t[i, j] = is_open
        masks_ref.append(g.process_vis(agent_pos=(3, 6)))
        transparent.append(t)
    got = np.asarray(vis(jnp.asarray(np.stack(transparent))))
    np.testing.assert_array_equal(got, np.stack(masks_ref))


# ---- core dynamics fuzzed against minigrid ----------------------------------------------


def _random_object(rng):
    colour = list(C.COLOR_TO_IDX)[int(rng.integers(0, 6))]
    kind = rng.choice(["wall", "door", "key", "ball", "box", "goal", "lava"],
                      p=[0.2, 0.2, 0.2, 0.1, 0.1, 0.05, 0.15])
    if kind == "door":
        state = rng.integers(0, 3)
        return Door(colour, is_open=state == 0, is_locked=state == 2)
    return {"wall": lambda: Wall(), "key": lambda: Key(colour), "ball": lambda: Ball(colour),
            "box": lambda: Box(colour), "goal": lambda: Goal(), "lava": lambda: Lava()}[kind]()


def test_core_step_and_view_fuzzed_against_minigrid():
    """Cluttered rooms (doors in every state and colour, keys, balls, boxes, goals,
    lava), random carried objects and actions: grid, agent, carried object, goal/lava
    flags and the view all equal ``minigrid``'s after every step."""
    rng = np.random.default_rng(1)
    step = jax.jit(C.grid_step)
    view = jax.jit(lambda s: C.gen_obs_image(s.grid, s.agent_pos, s.agent_dir, s.carrying, False))
    counts = collections.Counter()
    for episode in range(12):
        raw = _empty_minigrid(9)
        for _ in range(22):
            x, y = rng.integers(1, 8, size=2)
            if (x, y) != tuple(raw.agent_pos):
                raw.grid.set(int(x), int(y), _random_object(rng))
        raw.agent_dir = int(rng.integers(0, 4))
        raw.carrying = [None, Key("yellow"), Key("red"), Ball("blue")][episode % 4]
        state = _state_from_minigrid(raw)
        for t in range(60):
            a = int(rng.choice(7, p=[0.15, 0.15, 0.3, 0.13, 0.1, 0.14, 0.03]))
            fwd = raw.grid.get(*raw.front_pos)
            counts[(C.ACTION_NAMES[a], fwd.type if fwd else "empty")] += 1
            obs, reward, terminated, _, _ = raw.step(a)
            state, outcome = step(state, jnp.int32(a))
            ref = _state_from_minigrid(raw)
            where = f"episode {episode} step {t} action {C.ACTION_NAMES[a]}"
            for field in C.GridState._fields:
                np.testing.assert_array_equal(getattr(state, field), getattr(ref, field), where)
            assert bool(outcome.reached_goal) == (reward > 0), where
            assert bool(outcome.reached_goal | outcome.entered_lava) == terminated, where
            np.testing.assert_array_equal(view(state), obs["image"], err_msg=where)
    for needed in [("toggle", "door"), ("pickup", "key"), ("pickup", "box"), ("toggle", "box"),
                   ("drop", "empty"), ("drop", "door"), ("forward", "lava"), ("forward", "door")]:
        assert counts[needed] > 0, needed


# ---- exact optimum --------------------------------------------------------------------


def test_optimal_return_by_hand_empty_5x5():
    """(1, 1) facing +x to goal (3, 3): forward, forward, right, forward, forward."""
    env = MINIGRID_ENVS["minigrid-empty-5x5"]()
    params = env.sample_params(jax.random.key(0))
    assert int(params.optimal_steps) == 5
    assert float(env.optimal_return(params)) == pytest.approx(1 - 0.9 * 5 / 100)
    assert float(MINIGRID_ENVS["minigrid-empty-5x5"](max_steps=4).optimal_return(params)) == 0.0


def _brute_force_steps(raw, limit=60):
    """Fewest actions to a positive reward in the real env (BFS over deep copies)."""
    def key(e):
        carry = e.carrying.encode() if e.carrying else None
        return e.grid.encode().tobytes(), tuple(np.asarray(e.agent_pos)), e.agent_dir, carry

    frontier, seen = [raw], {key(raw)}
    for depth in range(1, limit + 1):
        nxt = []
        for e in frontier:
            for a in range(7):
                e2 = copy.deepcopy(e)
                _, r, term, _, _ = e2.step(a)
                if r > 0:
                    return depth
                if term or key(e2) in seen:
                    continue
                seen.add(key(e2))
                nxt.append(e2)
        frontier = nxt
    return L.UNREACHABLE


@pytest.mark.parametrize("name", ["minigrid-doorkey-5x5", "minigrid-lavagap-s5",
                                  "minigrid-empty-random-5x5"])
def test_optimal_steps_equal_brute_force_in_minigrid(name):
    cls = MINIGRID_ENVS[name]
    bank = cls().layout_bank().take(slice(0, 3))
    for i in range(len(bank)):
        raw = L.make_minigrid_env(cls.gym_id, dict(cls.gym_kwargs))
        raw.reset(seed=int(bank.seed[i]))
        raw.max_steps = 10_000
        assert _brute_force_steps(raw) == bank.optimal_steps[i], (name, i)


@pytest.mark.parametrize("name", sorted(MINIGRID_ENVS))
def test_bfs_route_earns_optimal_return_in_minigrid(name):
    """The BFS route, replayed in the real env, earns exactly ``optimal_return``."""
    cls = MINIGRID_ENVS[name]
    env = cls()
    bank = env.layout_bank().take(slice(0, 4))
    params = bank_to_params(bank)
    expected = np.asarray(jax.vmap(env.optimal_return)(params))
    raw = L.make_minigrid_env(cls.gym_id, dict(cls.gym_kwargs))
    for i in range(len(bank)):
        raw.reset(seed=int(bank.seed[i]))
        steps, route = L.optimal_steps(bank.grid[i], bank.agent_pos[i], bank.agent_dir[i], env.success)
        assert steps == len(route) == bank.optimal_steps[i]
        total, terminated = 0.0, False
        for t, a in enumerate(route):
            assert not terminated
            _, r, terminated, _, _ = raw.step(a)
            total += r
        assert terminated and total == pytest.approx(float(expected[i]), abs=1e-6), (name, i)


# ---- layout banks ---------------------------------------------------------------------


def test_bank_dedupes_by_content_and_splits_by_hash():
    with pytest.warns(UserWarning, match="only 32 distinct layouts"):
        bank = L.build_layout_bank("MiniGrid-Empty-Random-5x5-v0", 40, max_seeds=400)
    # 8 free cells x 4 directions, each kept once with its first seed
    assert len(bank) == 32
    hashes = [L.layout_hash(g, p, d) for g, p, d in zip(bank.grid, bank.agent_pos, bank.agent_dir)]
    assert len(set(hashes)) == 32
    assert len({(tuple(p), d) for p, d in zip(bank.agent_pos, bank.agent_dir)}) == 32
    assert list(bank.seed) == sorted(bank.seed)
    np.testing.assert_array_equal(bank.is_test, [L.is_test_layout(h) for h in hashes])
    assert 0 < bank.is_test.sum() < 32
    # a seed that repeats a layout is never stored: its layout's first seed is
    raw = L.make_minigrid_env("MiniGrid-Empty-Random-5x5-v0")
    first_seed = {h: s for h, s in zip(hashes, bank.seed)}
    for s in range(int(bank.seed.max()) + 1):
        raw.reset(seed=s)
        lay = L.layout_from_minigrid(raw)
        assert first_seed[L.layout_hash(lay["grid"], lay["agent_pos"], lay["agent_dir"])] <= s


def test_bank_prefix_cache_round_trip(tmp_path):
    small = L.build_layout_bank("MiniGrid-DoorKey-5x5-v0", 5)
    cached = L.load_layout_bank("MiniGrid-DoorKey-5x5-v0", 200, cache_dir=tmp_path, seed_start=3)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and "s3" in files[0].name
    again = L.read_layout_bank(files[0])
    for f in L.LayoutBank._fields[1:]:
        np.testing.assert_array_equal(getattr(again, f), getattr(cached, f))
    assert len(cached) == 48  # DoorKey-5x5 has 48 distinct layouts
    shipped = L.load_layout_bank("MiniGrid-DoorKey-5x5-v0", 5)  # prefix of the shipped bank
    for f in L.LayoutBank._fields[1:]:
        np.testing.assert_array_equal(getattr(shipped, f), getattr(small, f))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a bank")
    with pytest.raises(ValueError, match="bad.npz"):
        L.read_layout_bank(bad)


@pytest.mark.parametrize("name", sorted(MINIGRID_ENVS))
def test_splits_disjoint_and_deterministic(name):
    env = MINIGRID_ENVS[name]()
    train, test = env.split_bank("train"), env.split_bank("test")

    def digests(b):
        return {L.layout_hash(g, p, d) for g, p, d in zip(b.grid, b.agent_pos, b.agent_dir)}

    if env.no_held_out:
        assert digests(train) == digests(test)
        return
    assert not digests(train) & digests(test)
    assert len(train) + len(test) == len(env.layout_bank())
    assert all(L.is_test_layout(h) for h in digests(test))
    k = jax.random.key(3)
    a, b = env.sample_params(k, "test"), env.sample_params(k, "test")
    assert int(a.seed) == int(b.seed) and int(a.seed) in set(test.seed.tolist())


# ---- env API --------------------------------------------------------------------------


def test_spec_jit_vmap_over_tasks_and_autoreset():
    env = MINIGRID_ENVS["minigrid-doorkey-8x8"](max_steps=7)
    tasks = env.tasks("train")
    n = tasks.seed.shape[0]
    keys = jax.random.split(jax.random.key(0), n)
    obs, state = jax.jit(jax.vmap(env.reset))(keys, tasks)
    spec = env.observation_spec()
    for k in ("image", "direction"):
        assert obs[k].shape == (n, *spec[k].shape) and obs[k].dtype == spec[k].dtype
        assert int(obs[k].max()) < spec[k].num_values
    step = jax.jit(jax.vmap(env.step))
    for t in range(7):  # always turn left: only the time limit ends the episode
        obs, state, r, term, trunc, info = step(keys, state, jnp.zeros(n, jnp.int32), tasks)
    assert bool(trunc.all()) and not bool(term.any()) and float(r.sum()) == 0
    assert int(state.episode.step_count.max()) == 0  # auto-reset to the same layouts
    np.testing.assert_array_equal(state.episode.agent_dir, tasks.agent_dir)
    np.testing.assert_array_equal(obs["image"], state.start_image)
    np.testing.assert_array_equal(info["final_obs"]["direction"], (tasks.agent_dir - 7) % 4)


def test_dark_fourrooms_hides_goal_only():
    lit, dark = MINIGRID_ENVS["minigrid-fourrooms"](), MINIGRID_ENVS["minigrid-fourrooms-dark"]()
    tasks = lit.tasks("train")
    np.testing.assert_array_equal(tasks.seed, dark.tasks("train").seed)
    keys = jax.random.split(jax.random.key(0), tasks.seed.shape[0])
    obs_l, st = jax.jit(jax.vmap(lit.reset))(keys, tasks)
    obs_d = jax.jit(jax.vmap(dark.observe))(st)
    img_l, img_d = np.asarray(obs_l["image"]), np.asarray(obs_d["image"])
    goal = img_l[..., 0] == C.GOAL
    assert goal.any() and not (img_d[..., 0] == C.GOAL).any()
    assert (img_d[goal] == C.EMPTY_CELL).all()
    np.testing.assert_array_equal(img_d[~goal], img_l[~goal])
    # the wrapper for the real env applies the same rule
    raw = L.make_minigrid_env("MiniGrid-FourRooms-v0")
    wrapped = HideGoalObs(raw)
    for i, s in enumerate(tasks.seed[:10]):
        o, _ = wrapped.reset(seed=int(s))
        np.testing.assert_array_equal(o["image"], img_d[i])


def test_explore_action_walks_forward_exactly_when_the_way_is_free():
    """The explorer reads the cell ahead from the view: with turn_prob 0 it goes forward
    exactly when forward moves the agent (FourRooms: only walls block), else it turns."""
    env = MINIGRID_ENVS["minigrid-fourrooms-dark"]()
    tasks = env.tasks("train")
    n = tasks.seed.shape[0]
    keys = jax.random.split(jax.random.key(0), n)
    obs, state = jax.jit(jax.vmap(env.reset))(keys, tasks)
    explore = jax.jit(jax.vmap(lambda k, o: env.explore_action(k, o, 0.0)))
    step = jax.jit(jax.vmap(env.step))
    forward = jnp.full(n, C.FORWARD, jnp.int32)
    checked = collections.Counter()
    for t in range(60):  # a walk with random turns visits walls and open floor alike
        k_explore, k_turn = jax.random.split(jax.random.fold_in(jax.random.key(1), t))
        action = np.asarray(explore(jax.random.split(k_explore, n), obs))
        _, moved, _, reached, *_ = step(keys, state, forward, tasks)
        # (reaching the goal auto-resets the agent, possibly to the cell it left)
        free = np.any(np.asarray(moved.episode.agent_pos) != np.asarray(state.episode.agent_pos),
                      -1) | np.asarray(reached)
        np.testing.assert_array_equal(action == C.FORWARD, free, err_msg=f"step {t}")
        assert set(np.unique(action[~free])) <= {C.LEFT, C.RIGHT}
        checked.update(free.tolist())
        turns = jax.random.randint(k_turn, (n,), 0, 3)  # left, right or forward
        obs, state, *_ = step(keys, state, turns, tasks)
    assert checked[True] > 100 and checked[False] > 100
    # with turn_prob 1 it always turns
    always = jax.vmap(lambda k, o: env.explore_action(k, o, 1.0))(keys, obs)
    assert set(np.unique(np.asarray(always))) <= {C.LEFT, C.RIGHT}


def test_bad_fields_raise():
    cls = MINIGRID_ENVS["minigrid-fourrooms"]
    with pytest.raises(ValueError, match="max_steps"):
        cls(max_steps=0)
    with pytest.raises(ValueError, match="num_layouts"):
        cls(num_layouts=-3)
    with pytest.raises(ValueError, match="split"):
        cls().tasks("val")
    with pytest.raises(ValueError, match="unknown minigrid id"):
        L.build_layout_bank("MiniGrid-Nope-v0", 2)


# ---- the shortest-path demonstrator ----------------------------------------------------------
def _follow_demonstrator(env, tasks, num_steps):
    """Roll ``env.optimal_action`` from every task's start: (reward, terminated, truncated)."""

    def one(params):
        _, state = env.reset(jax.random.key(0), params)

        def body(state, key):
            action = env.optimal_action(key, state, params)
            _, state, reward, term, trunc, _ = env.step(key, state, action, params)
            return state, (reward, term, trunc)

        return jax.lax.scan(body, state, jax.random.split(jax.random.key(1), num_steps))[1]

    return jax.tree.map(np.asarray, jax.jit(jax.vmap(one))(tasks))


@pytest.mark.parametrize("name", ["minigrid-fourrooms-dark", "minigrid-simplecrossing-s11n5",
                                  "minigrid-lavagap-s7", "minigrid-empty-random-8x8"])
def test_demonstrator_reaches_the_goal_in_exactly_the_optimal_steps(name):
    env = envs.make(name)
    for split in ("train", "test"):
        tasks = env.tasks(split)
        steps = np.asarray(tasks.optimal_steps)
        assert (steps <= env.horizon).all()
        n = np.arange(len(steps))
        start = np.asarray(tasks.goal_distance)[n, np.asarray(tasks.agent_pos[:, 1]),
                                                 np.asarray(tasks.agent_pos[:, 0]),
                                                 np.asarray(tasks.agent_dir)]
        np.testing.assert_array_equal(start, steps)  # the JAX table agrees with the BFS
        reward, term, trunc = _follow_demonstrator(env, tasks, 2 * int(steps.max()))
        assert not trunc.any()
        first = term.argmax(1)  # the first episode ends on success ...
        assert term[n, first].all()
        np.testing.assert_array_equal(first + 1, steps)  # ... after exactly optimal_steps
        np.testing.assert_allclose(reward[n, first], np.asarray(jax.vmap(env.optimal_return)(tasks)),
                                   rtol=1e-6)
        # the next episode (same task, same start) succeeds after optimal_steps again
        count = np.cumsum(term, 1)
        second = (count < 2).sum(1)
        np.testing.assert_array_equal(second + 1, 2 * steps)
        within = np.arange(reward.shape[1])[None] < 2 * steps[:, None]
        np.testing.assert_array_equal((reward * within).sum(1), 2 * reward[n, first])


def test_demonstrator_only_on_navigation_envs():
    env = envs.make("minigrid-doorkey-5x5")
    assert not env.has_demonstrator and envs.make("minigrid-fourrooms").has_demonstrator
    params = env.sample_params(jax.random.key(0))
    _, state = env.reset(jax.random.key(0), params)
    with pytest.raises(ValueError, match="demonstrator"):
        env.optimal_action(jax.random.key(0), state, params)
