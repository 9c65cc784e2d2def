"""AD on MiniGrid: the "minigrid" observation encoder, and the gymnasium-loop evaluator
against the real ``minigrid`` env. (The shortest-path demonstrator is tested in
tests/envs/test_minigrid.py, the MiniGrid gymnasium ids in tests/envs/test_gym.py.)"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from ad.config import ModelConfig
from ad.inputs import StepInputs
from ad.model import ADTransformer, decode_step, init_cache, init_params
from tests.helpers import params_for

A = 7  # MiniGrid actions
MINIGRID = dict(num_actions=A, obs_encoder="minigrid", obs_shape=(7, 7, 3), obs_num_values=11)


@pytest.fixture
def tiny(tiny_config):
    """The tiny model with MiniGrid's actions and observations."""
    return lambda **kw: tiny_config(**{**MINIGRID, **kw})


def random_inputs(seed: int, B: int, T: int) -> StepInputs:
    """Random MiniGrid-shaped step inputs (host side)."""
    rng = np.random.default_rng(seed)
    image = np.stack([rng.integers(0, n, (B, T, 7, 7)) for n in (11, 6, 3)], -1)
    obs = {"image": image.astype(np.int32),
           "direction": rng.integers(0, 4, (B, T)).astype(np.int32)}
    prev_action = rng.integers(0, A + 1, (B, T)).astype(np.int32)
    prev_reward = (rng.random((B, T)) < 0.3).astype(np.float32)
    return StepInputs(obs, prev_action, prev_reward)


def perturb_obs(inputs: StepInputs, steps: np.ndarray, what: str) -> StepInputs:
    """Change only the image (one cell's object) or only the direction at ``steps``."""
    sel = np.asarray(steps)[None, :]
    image, direction = inputs.obs["image"].copy(), inputs.obs["direction"].copy()
    if what == "image":
        cell = image[:, :, 2, 4, 0]
        image[:, :, 2, 4, 0] = np.where(sel, (cell + 3) % 11, cell)
    else:
        direction = np.where(sel, (direction + 1) % 4, direction)
    return StepInputs({"image": image, "direction": direction}, inputs.prev_action,
                      inputs.prev_reward)


def stack(*inputs: StepInputs) -> StepInputs:
    return jax.tree.map(lambda *x: np.concatenate(x, 0), *inputs)


# ---- the "minigrid" encoder ----------------------------------------------------------------
def test_for_env_picks_the_minigrid_encoder(tiny):
    for name in ("minigrid-fourrooms-dark", "minigrid-doorkey-5x5"):
        cfg = ModelConfig.for_env(envs.make(name), context=5)
        assert (cfg.obs_encoder, cfg.obs_shape, cfg.obs_num_values, cfg.num_actions) == (
            "minigrid", (7, 7, 3), 11, 7)
        assert ModelConfig.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ValueError, match="obs_shape"):
        tiny(obs_shape=(2,))
    params = params_for(tiny())
    enc = params["obs_embed"]
    assert enc["cell_embedding"].shape == (20, 8)
    assert enc["image_proj"]["kernel"].shape == (7 * 7 * 8, 16)
    assert enc["direction_embedding"].shape == (4, 16)


def test_minigrid_encoder_uses_every_part_of_the_observation(tiny):
    cfg = tiny()
    f = jax.jit(lambda p, i: ADTransformer(cfg).apply({"params": p}, i, train=False))
    params = params_for(cfg)
    inp = random_inputs(0, 1, 6)
    last = np.arange(6) == 5
    outs = [f(params, x) for x in (inp, perturb_obs(inp, last, "image"),
                                   perturb_obs(inp, last, "direction"))]
    for other in outs[1:]:
        assert np.abs(np.asarray(other[:, 5]) - np.asarray(outs[0][:, 5])).max() > 1e-5
        np.testing.assert_allclose(other[:, :5], outs[0][:, :5], atol=1e-6)
    with pytest.raises(ValueError, match="image"):
        f(params, StepInputs(inp.obs["image"], inp.prev_action, inp.prev_reward))


@pytest.mark.parametrize("layout,pos", [("step", "rope"), ("oar", "alibi")])
def test_causality_and_receptive_field_with_minigrid_obs(layout, pos, tiny):
    cfg = tiny(token_layout=layout, positions=pos)
    f = jax.jit(lambda p, i: ADTransformer(cfg).apply({"params": p}, i, train=False))
    params = params_for(cfg)
    T, B = 12, 2
    inp = random_inputs(1, B, T)
    field = cfg.receptive_field  # L*(c-1)+1 = 5 steps
    steps = np.arange(T)
    ts = (3, 9)
    variants = [inp]
    for t in ts:
        variants += [perturb_obs(inp, steps > t, "image"),
                     perturb_obs(inp, steps <= t - field, "image"),
                     perturb_obs(inp, steps == t - field + 1, "direction")]
    out = np.asarray(f(params, stack(*variants))).reshape(len(variants), B, T, A)
    base = out[0]
    for n, t in enumerate(ts):
        future, beyond, oldest = out[1 + 3 * n: 4 + 3 * n]
        np.testing.assert_allclose(future[:, : t + 1], base[:, : t + 1], atol=1e-6)
        assert np.abs(future[:, t + 1:] - base[:, t + 1:]).max() > 1e-5
        if t - field >= 0:
            np.testing.assert_allclose(beyond[:, t], base[:, t], atol=1e-6)
            assert np.abs(oldest[:, t] - base[:, t]).max() > 1e-6


@pytest.mark.parametrize("layout,pos", [("step", "rope"), ("oar", "alibi")])
def test_kv_cache_decode_equals_full_forward_with_minigrid_obs(layout, pos, tiny):
    cfg = tiny(token_layout=layout, positions=pos, context=4, d_model=32, num_heads=4,
               mlp_dim=64)
    params = params_for(cfg)
    T, B = 24, 3
    inp = random_inputs(2, B, T)
    full = ADTransformer(cfg).apply({"params": params}, inp, train=False)

    def decode_all(params, inputs):
        def body(cache, step):
            logits, cache = decode_step(params, cfg, cache, step)
            return cache, logits

        steps = jax.tree.map(lambda x: jnp.swapaxes(jnp.asarray(x), 0, 1), inputs)
        cache, logits = jax.lax.scan(body, init_cache(cfg, B), steps)
        return jnp.swapaxes(logits, 0, 1), cache

    dec, cache = jax.jit(decode_all)(params, inp)
    assert int(cache.step) == T
    np.testing.assert_allclose(dec, full, atol=1e-5)


# ---- the gymnasium loop: the real minigrid env against the JAX port ----------------------------
def _sharp_params(cfg, seed=0, scale=15.0):
    """Random-init params with a head scaled up, so the policy depends visibly on its inputs."""
    params = init_params(cfg, jax.random.key(seed))
    head = dict(params["head"], kernel=params["head"]["kernel"] * scale)
    return dict(params, head=head)


def test_gym_rollout_in_real_minigrid_equals_the_jax_port(tiny):
    gymnasium = pytest.importorskip("gymnasium")
    pytest.importorskip("minigrid")
    from ad.evaluate import ad_rollout, gym_rollout
    from envs.minigrid import HideGoalObs

    env = envs.make("minigrid-fourrooms-dark")
    tasks = env.tasks("test")
    # held-out layouts whose goal is close to the start, so the random policy succeeds often
    picks = np.argsort(np.asarray(tasks.optimal_steps), kind="stable")[:3]
    cfg = tiny(context=16, d_model=32, num_heads=4, mlp_dim=64)
    params = _sharp_params(cfg)
    real = HideGoalObs(gymnasium.make("MiniGrid-FourRooms-v0"))
    E = 6
    total_reward = 0.0
    for i in picks:
        task = jax.tree.map(lambda x: x[i:i + 1], tasks)
        key = jax.random.key(100 + int(i))
        jr = jax.tree.map(np.asarray, ad_rollout(params, cfg, env, task, key, E * env.horizon))
        gr = gym_rollout(params, cfg, real, int(tasks.seed[i]), key, E)
        S = len(gr.action)
        assert gr.done.sum() == E and gr.done[-1] and jr.done[0, :S].sum() == E
        np.testing.assert_array_equal(gr.action, jr.action[0, :S])
        np.testing.assert_array_equal(gr.done, jr.done[0, :S])
        np.testing.assert_allclose(gr.reward, jr.reward[0, :S], rtol=0, atol=1e-6)
        assert len(set(gr.action.tolist())) > 2  # not a frozen policy
        total_reward += float(gr.reward.sum())
    assert total_reward > 0  # some episodes reached the goal, so returns were compared too


def test_gym_rollout_in_our_gym_env_equals_ad_rollout(tiny):
    import gymnasium

    from ad.evaluate import ad_rollout, gym_rollout

    env = envs.make("minigrid-fourrooms-dark")
    tasks = env.tasks("test")
    # with both optional inputs, so the loop's done and (dict) obs[t-1] are checked too
    cfg = tiny(context=16, d_model=32, num_heads=4, mlp_dim=64, episode_start_token=True,
               prev_obs_token=True)
    params = _sharp_params(cfg, seed=1)
    task = jax.tree.map(lambda x: x[:1], tasks)
    gym_env = gymnasium.make(envs.GYM_IDS["minigrid-fourrooms-dark"],
                             task=jax.tree.map(lambda x: x[0], task))
    key = jax.random.key(7)
    jr = jax.tree.map(np.asarray, ad_rollout(params, cfg, env, task, key, 3 * env.horizon))
    gr = gym_rollout(params, cfg, gym_env, None, key, 3)
    S = len(gr.action)
    np.testing.assert_array_equal(gr.action, jr.action[0, :S])
    np.testing.assert_array_equal(gr.reward, jr.reward[0, :S])
