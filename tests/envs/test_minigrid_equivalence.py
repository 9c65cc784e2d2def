"""Step-by-step equivalence of the JAX MiniGrid ports with the real ``minigrid`` package.

For every registered port, several layouts of its shipped bank are replayed in both
implementations with the same long action sequences: a scripted prefix (the BFS-optimal
route with detours: drop and re-pick the key, close and reopen the door) so goals, keys
and doors are always reached, then random actions biased towards forward / toggle /
pickup. At every step the port's observation (image + direction), reward, terminated
and truncated must equal ``minigrid``'s; after an episode ends the port's auto-reset
observation must equal ``minigrid``'s ``reset(seed=layout_seed)``. Coverage counters
(read from the real env) prove the interesting events actually happened.

The default run keeps every env but few layouts (about a minute on 2 cores);
``pytest -m slow`` runs a longer sweep.
"""

from __future__ import annotations

import collections
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs.minigrid import MINIGRID_ENVS, HideGoalObs
from envs.minigrid import core as C
from envs.minigrid.envs import bank_to_params
from envs.minigrid.layouts import layout_from_minigrid, make_minigrid_env, optimal_steps

# left, right, forward, pickup, drop, toggle, done
ACTION_PROBS = np.array([0.14, 0.14, 0.38, 0.12, 0.06, 0.13, 0.03])
FAST = {"layouts": 3, "steps": 260}
SLOW = {"layouts": 24, "steps": 1200}


def scripted_prefix(grid, agent_pos, agent_dir, success) -> list[int]:
    """The BFS-optimal route, with a drop/re-pick after each pickup and a
    close/reopen after each door opening (DoorKey), so those transitions are tested."""
    _, route = optimal_steps(grid, agent_pos, agent_dir, success)
    out = []
    for i, a in enumerate(route):
        out.append(a)
        if a == C.PICKUP:
            out += [C.DROP, C.PICKUP]
        if a == C.TOGGLE and i < len(route) - 1:
            out += [C.TOGGLE, C.TOGGLE]
    return out


def action_sequences(env, bank, num_steps, rng) -> np.ndarray:
    seqs = rng.choice(7, size=(len(bank), num_steps), p=ACTION_PROBS).astype(np.int32)
    for i in range(0, len(bank), 2):  # every other layout starts with the scripted route
        prefix = scripted_prefix(bank.grid[i], bank.agent_pos[i], bank.agent_dir[i], env.success)
        seqs[i, : len(prefix)] = prefix[:num_steps]
    return seqs


def port_rollout(env, params, actions):
    """jit(vmap(scan)) over layouts and steps of the port's auto-resetting ``step``."""

    def one(p, acts):
        obs0, state = env.reset(jax.random.key(0), p)

        def body(state, a):
            obs, state, r, term, trunc, info = env.step(jax.random.key(1), state, a, p)
            return state, (obs, info["final_obs"], r, term, trunc)

        _, out = jax.lax.scan(body, state, acts)
        return obs0, out

    return jax.jit(jax.vmap(one))(params, jnp.asarray(actions))


def _count_events(mg, action, obs, reward, terminated, truncated, before):
    fwd_obj, carried_before, door_states_before = before
    c = collections.Counter()
    if action == C.FORWARD and fwd_obj == "wall":
        c["bump_wall"] += 1
    if terminated and reward > 0:
        c["success"] += 1
    if terminated and reward == 0:
        c["lava"] += 1
    if truncated:
        c["truncated"] += 1
    if action == C.PICKUP and carried_before is None and mg.carrying is not None:
        c["pickup"] += 1
    if action == C.DROP and carried_before is not None and mg.carrying is None:
        c["drop"] += 1
    doors_after = _door_states(mg)
    for pos, st in door_states_before.items():
        after = doors_after[pos]
        if st != after:
            c[f"door_{st}_to_{after}"] += 1
        elif action == C.TOGGLE and st == "locked" and fwd_obj == "door":
            c["toggle_locked_stays"] += 1
    if mg.carrying is not None:
        c["carrying_in_view"] += 1
    if (obs["image"][..., 0] == C.UNSEEN).any():
        c["occluded"] += 1
    cell = mg.grid.get(*mg.agent_pos)
    if cell is not None and cell.type == "door":
        c["inside_door"] += 1
    return c


def _door_states(mg) -> dict:
    out = {}
    for j in range(mg.grid.height):
        for i in range(mg.grid.width):
            v = mg.grid.get(i, j)
            if v is not None and v.type == "door":
                out[(i, j)] = "open" if v.is_open else ("locked" if v.is_locked else "closed")
    return out


def check_equivalence(name: str, num_layouts: int, num_steps: int, max_steps=None, seed=0):
    cls = MINIGRID_ENVS[name]
    env = cls(max_steps=max_steps)
    bank = env.layout_bank().take(slice(0, num_layouts))
    params = bank_to_params(bank)
    rng = np.random.default_rng(seed)
    actions = action_sequences(env, bank, num_steps, rng)
    obs0, (obs, final_obs, reward, term, trunc) = jax.device_get(
        port_rollout(env, params, actions)
    )

    kwargs = dict(cls.gym_kwargs)
    if max_steps is not None:
        kwargs["max_steps"] = max_steps
    raw = make_minigrid_env(cls.gym_id, kwargs)
    assert raw.max_steps == env.horizon, "default max_steps differs from minigrid's"
    mg_env = HideGoalObs(raw) if cls.hide_goal else raw
    counts = collections.Counter()
    for i in range(len(bank)):
        seed_i = int(bank.seed[i])
        o, _ = mg_env.reset(seed=seed_i)
        layout = layout_from_minigrid(raw)  # the bank holds exactly minigrid's layout
        np.testing.assert_array_equal(layout["grid"], bank.grid[i])
        np.testing.assert_array_equal(layout["agent_pos"], bank.agent_pos[i])
        assert layout["agent_dir"] == bank.agent_dir[i]
        np.testing.assert_array_equal(obs0["image"][i], o["image"], err_msg=f"{name} reset {i}")
        assert obs0["direction"][i] == o["direction"]
        for t in range(num_steps):
            a = int(actions[i, t])
            fwd = raw.grid.get(*raw.front_pos)
            before = (fwd.type if fwd else None, raw.carrying, _door_states(raw))
            o, r, te, tr, _ = mg_env.step(a)
            where = f"{name} layout {i} (seed {seed_i}) step {t} action {C.ACTION_NAMES[a]}"
            np.testing.assert_array_equal(final_obs["image"][i, t], o["image"], err_msg=where)
            assert final_obs["direction"][i, t] == o["direction"], where
            assert abs(float(reward[i, t]) - r) < 1e-6, (where, float(reward[i, t]), r)
            assert bool(term[i, t]) == te, (where, "terminated")
            assert bool(trunc[i, t]) == tr, (where, "truncated")
            counts += _count_events(raw, a, o, r, te, tr, before)
            if te or tr:
                counts["episodes"] += 1
                o, _ = mg_env.reset(seed=seed_i)
            # after an auto-reset the port already shows the next episode's start
            np.testing.assert_array_equal(obs["image"][i, t], o["image"], err_msg=where + " (next)")
            assert obs["direction"][i, t] == o["direction"], where
    return counts


# Events each family must exercise in the fast run (the scripted route guarantees most).
REQUIRED = {
    "empty": {"bump_wall", "success"},
    "fourrooms": {"bump_wall", "success", "occluded", "truncated"},
    "doorkey": {"bump_wall", "success", "pickup", "drop", "door_locked_to_open",
                "door_open_to_closed", "door_closed_to_open", "carrying_in_view", "occluded",
                "inside_door"},
    "unlock": {"success", "pickup", "drop", "door_locked_to_open", "carrying_in_view",
               "occluded"},
    "lavagap": {"success", "lava", "occluded", "bump_wall"},
    "simplecrossing": {"bump_wall", "success", "occluded"},
}


@pytest.mark.parametrize("name", sorted(MINIGRID_ENVS))
def test_port_equals_minigrid(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        counts = check_equivalence(name, FAST["layouts"], FAST["steps"])
    family = name.split("-")[1]
    missing = REQUIRED[family] - {k for k, v in counts.items() if v > 0}
    assert not missing, f"{name}: events never exercised: {sorted(missing)}; counts {dict(counts)}"


def test_truncation_with_doors_and_short_limit():
    """A short max_steps override truncates mid-task; the limit must match minigrid's."""
    counts = check_equivalence("minigrid-doorkey-8x8", 4, 200, max_steps=23, seed=1)
    assert counts["truncated"] >= 4
    counts = check_equivalence("minigrid-unlock", 4, 150, max_steps=17, seed=2)
    assert counts["truncated"] >= 4


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MINIGRID_ENVS))
def test_port_equals_minigrid_long(name, request):
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("long sweep: run with -m slow")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        check_equivalence(name, SLOW["layouts"], SLOW["steps"], seed=7)
