"""Distillation loop and in-context evaluation: data alignment, checkpoints and exact
resume, sharded == single device, KV-cache rollouts, and a tiny end-to-end bandit run in
which the distilled model improves in context on held-out tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from ad import evaluate as ev
from ad.dataset import load_dataset
from ad.model import (ADTransformer, ModelConfig, StepInputs, init_params, run_with_cache,
                      running_episode_return)
from ad.train import (DistillConfig, WindowSampler, distill, latest_checkpoint, load_model,
                      task_targets)
from ad.train_step import Batch, loss_fn
from experiments.collect import CollectConfig, collect

ROOT = Path(__file__).resolve().parents[1]

TINY = dict(context=4, window=8, d_model=16, num_layers=1, num_heads=2, mlp_dim=32,
            dropout=0.0, batch_size=8, lr=3e-3, warmup_steps=2, log_every=1, progress=False)


@pytest.fixture(scope="module")
def darkroom_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "dr"
    collect(CollectConfig(out=out, env="darkroom", source="noise",
                          source_overrides={"num_steps": 100}, num_histories=16,
                          shard_size=8, verbose=False))
    return out


def test_windows_align_inputs_and_targets(darkroom_data):
    """prev_action/prev_reward are the previous step's; target is this step's action."""
    ds = load_dataset(darkroom_data)
    sampler = WindowSampler(ds, window=8, batch_size=32, seed=3, num_actions=5)
    batch = sampler.batch(0)
    hist, start = sampler.indices(0)
    assert (start == 0).any() or True  # starts are random; check every row either way
    for b in range(32):
        h = ds.history(int(hist[b]))
        s = int(start[b])
        np.testing.assert_array_equal(batch.target_action[b], h.action[s:s + 8])
        np.testing.assert_array_equal(batch.inputs.obs[b], h.obs[s:s + 8])
        if s == 0:
            assert batch.inputs.prev_action[b, 0] == 5 and batch.inputs.prev_reward[b, 0] == 0
        else:
            assert batch.inputs.prev_action[b, 0] == h.action[s - 1]
            assert batch.inputs.prev_reward[b, 0] == h.reward[s - 1]
        np.testing.assert_array_equal(batch.inputs.prev_action[b, 1:], h.action[s:s + 7])
        np.testing.assert_array_equal(batch.inputs.prev_reward[b, 1:], h.reward[s:s + 7])
        done = np.logical_or(h.terminated, h.truncated)
        first = True if s == 0 else done[s - 1]
        np.testing.assert_array_equal(batch.inputs.episode_start[b],
                                      np.concatenate([[first], done[s:s + 7]]))
    # deterministic: the same step gives the same batch
    again = sampler.batch(0)
    np.testing.assert_array_equal(again.target_action, batch.target_action)
    assert batch.inputs.prev_obs is None
    # prev_obs = obs[t-1] (the step before a mid-stream window; unread at a stream start)
    with_prev = WindowSampler(ds, window=8, batch_size=32, seed=3, num_actions=5,
                              prev_obs=True).batch(0)
    np.testing.assert_array_equal(with_prev.inputs.obs, batch.inputs.obs)
    for b in range(32):
        h, s = ds.history(int(hist[b])), int(start[b])
        np.testing.assert_array_equal(with_prev.inputs.prev_obs[b, 1:], h.obs[s:s + 7])
        if s > 0:
            np.testing.assert_array_equal(with_prev.inputs.prev_obs[b, 0], h.obs[s - 1])
    # episode_return: the reward so far in the step's episode, by a plain loop over the
    # whole history (windows that start mid-episode carry what came before them)
    assert batch.inputs.episode_return is None
    with_ret = WindowSampler(ds, window=8, batch_size=32, seed=3, num_actions=5,
                             episode_return=True).batch(0)
    np.testing.assert_array_equal(with_ret.target_action, batch.target_action)
    mid_episode = 0
    for b in range(32):
        h, s = ds.history(int(hist[b])), int(start[b])
        done = np.logical_or(h.terminated, h.truncated)
        running, expected = 0.0, []
        for t in range(s + 8):
            if t > 0 and done[t - 1]:
                running = 0.0
            expected.append(running)
            running += float(h.reward[t])
        np.testing.assert_array_equal(with_ret.inputs.episode_return[b], expected[s:])
        mid_episode += expected[s] > 0
    assert mid_episode > 0  # some window starts after its episode has paid


def test_intended_action_targets_with_executed_inputs(darkroom_data, tmp_path):
    """targets="intended_action": the model predicts the source's choice before its
    slips while its inputs carry what was executed (the slips)."""
    out = tmp_path / "slips"
    collect(CollectConfig(out=out, env="darkroom", source="memory",
                          source_overrides={"num_steps": 400, "epsilon": 0.0, "slip_prob": 0.5},
                          num_histories=8, shard_size=8, verbose=False))
    ds = load_dataset(out)
    sampler = WindowSampler(ds, window=8, batch_size=32, seed=1, num_actions=5,
                            targets="intended_action")
    batch, executed = sampler.batch(0), WindowSampler(ds, 8, 32, 1, 5).batch(0)
    hist, start = sampler.indices(0)
    for b in range(32):
        h, s = ds.history(int(hist[b])), int(start[b])
        np.testing.assert_array_equal(batch.target_action[b], h.intended_action[s:s + 8])
        np.testing.assert_array_equal(executed.target_action[b], h.action[s:s + 8])
    jax.tree.map(np.testing.assert_array_equal, batch.inputs, executed.inputs)
    assert (batch.target_action != executed.target_action).sum() > 10  # the slips differ
    with pytest.raises(ValueError, match="stores no intended_action"):
        WindowSampler(load_dataset(darkroom_data), 8, 32, 1, 5, targets="intended_action")
    with pytest.raises(ValueError, match="DistillConfig.targets"):
        DistillConfig(dataset="d", out="o", targets="reward")


def test_task_targets_are_each_windows_task(darkroom_data):
    """The auxiliary head's targets: the task entries of the history a window comes from
    (Dark Room: the goal's x, y), refused where they cannot be classes."""
    ds = load_dataset(darkroom_data)
    table = task_targets(ds, num_values=9)
    assert table.shape == (ds.num_histories, 2) and table.dtype == np.int32
    sampler = WindowSampler(ds, window=8, batch_size=32, seed=3, num_actions=5,
                            task_targets=table)
    batch, plain = sampler.batch(0), WindowSampler(ds, 8, 32, 3, 5).batch(0)
    hist, _ = sampler.indices(0)
    for b in range(32):
        np.testing.assert_array_equal(batch.task_target[b], np.asarray(ds.task_params(int(hist[b])).goal))
    jax.tree.map(np.testing.assert_array_equal, batch.inputs, plain.inputs)
    assert plain.task_target is None
    with pytest.raises(ValueError, match=r"goal.*outside the head's classes \[0, 3\)"):
        task_targets(ds, num_values=3)
    with pytest.raises(ValueError, match="task_loss_weight"):
        DistillConfig(dataset="d", out="o", task_loss_weight=-1.0)


def test_task_loss_adds_the_weighted_task_cross_entropy():
    """loss_fn with task_weight w = action CE + w * (mean over steps and entries of the
    task head's CE), computed here by hand; the head changes no action logit and, like
    them, never reads later steps."""
    cfg = ModelConfig(num_actions=5, d_model=16, num_layers=2, num_heads=2, mlp_dim=32,
                      dropout=0.0, context=3, task_entries=2)
    params = init_params(cfg, jax.random.key(0))
    model = ADTransformer(cfg)
    rng = np.random.default_rng(0)
    B, T = 3, 7
    inputs = StepInputs(obs=jnp.asarray(rng.integers(0, 9, (B, T, 2)), jnp.int32),
                        prev_action=jnp.asarray(rng.integers(0, 6, (B, T)), jnp.int32),
                        prev_reward=jnp.asarray(rng.integers(0, 2, (B, T)), jnp.float32))
    batch = Batch(inputs=inputs, target_action=jnp.asarray(rng.integers(0, 5, (B, T)), jnp.int32),
                  mask=jnp.ones((B, T)), task_target=jnp.asarray(rng.integers(0, 9, (B, 2)), jnp.int32))
    out = model.apply({"params": params}, inputs, train=False, method=ADTransformer.with_task_logits)
    assert out.task_logits.shape == (B, T, 2, 9)
    np.testing.assert_array_equal(out.logits, model.apply({"params": params}, inputs, train=False))
    action_loss, _ = loss_fn(params, batch, None, model=model, train=False)
    objective, m = loss_fn(params, batch, None, model=model, task_weight=0.5, train=False)
    z = np.asarray(out.task_logits, np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    target = np.asarray(batch.task_target)
    by_hand = -np.mean([logp[b, t, e, target[b, e]] for b in range(B) for t in range(T)
                        for e in range(2)])
    np.testing.assert_allclose(m["task_loss"], by_hand, rtol=1e-5)
    np.testing.assert_allclose(objective, action_loss + 0.5 * by_hand, rtol=1e-5)
    np.testing.assert_allclose(m["loss"], action_loss, rtol=0)
    cached_logits, cache = run_with_cache(params, cfg, inputs)
    np.testing.assert_array_equal(cached_logits, out.logits)
    np.testing.assert_allclose(cache["hook_task_logits"], out.task_logits, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="needs Batch.task_target"):
        loss_fn(params, batch._replace(task_target=None), None, model=model, task_weight=0.5,
                train=False)
    later = inputs._replace(obs=inputs.obs.at[:, -1].set((inputs.obs[:, -1] + 1) % 9))
    changed = model.apply({"params": params}, later, train=False,
                          method=ADTransformer.with_task_logits).task_logits
    np.testing.assert_array_equal(changed[:, :-1], out.task_logits[:, :-1])
    assert not np.allclose(changed[:, -1], out.task_logits[:, -1])


def test_distill_with_task_head_trains_it_and_acts_without_it(darkroom_data, tmp_path):
    run = distill(DistillConfig(dataset=str(darkroom_data), out=str(tmp_path / "aux"),
                                num_steps=3, task_loss_weight=1.0, **TINY))
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(np.isfinite(r["task_loss"]) for r in records)
    assert records[0]["task_loss"] == pytest.approx(np.log(9), rel=0.05)  # near-uniform at init
    m = load_model(run)
    assert m.config.task_entries == 2
    x = StepInputs(obs=jnp.zeros((1, 5, 2), jnp.int32), prev_action=jnp.full((1, 5), 5, jnp.int32),
                   prev_reward=jnp.zeros((1, 5)))
    assert m.apply(x).shape == (1, 5, 5)


def test_rollouts_refuse_a_temperature_that_is_not_positive():
    env = envs.make("darkroom")
    cfg = ModelConfig(num_actions=5, d_model=16, num_layers=1, num_heads=2, mlp_dim=32, context=3)
    params = init_params(cfg, jax.random.key(0))
    tasks = jax.tree.map(lambda a: a[:2], env.tasks("test"))
    for t in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            ev.ad_rollout(params, cfg, env, tasks, jax.random.key(1), 4, temperature=t)
        with pytest.raises(ValueError, match="temperature must be > 0"):
            ev.gym_rollout(params, cfg, None, 0, jax.random.key(1), 1, temperature=t)


def test_stream_start_windows_are_sampled(darkroom_data):
    """Windows that start a stream (the "none" token) occur, so evaluation's first step is trained."""
    ds = load_dataset(darkroom_data)
    sampler = WindowSampler(ds, window=8, batch_size=64, seed=0, num_actions=5)
    starts = np.concatenate([sampler.indices(s)[1] for s in range(40)])
    assert (starts == 0).sum() > 0


def test_expert_distillation_windows_come_from_the_end(darkroom_data):
    ds = load_dataset(darkroom_data)
    sampler = WindowSampler(ds, window=8, batch_size=64, seed=0, num_actions=5, last_steps=20)
    starts = np.concatenate([sampler.indices(s)[1] for s in range(10)])
    assert starts.min() >= ds.num_steps - 20 and starts.max() <= ds.num_steps - 8


def test_first_success_end_by_hand_and_focused_windows(darkroom_data):
    """first_success_end against a plain loop over episodes; focused windows hold it in
    their first half; p = 0 is uniform placement draw for draw."""
    from ad.train import first_success_end
    ds = load_dataset(darkroom_data)
    ends = first_success_end(ds)
    for i in range(ds.num_histories):
        h = ds.history(i)
        done = np.flatnonzero(np.logical_or(h.terminated, h.truncated))
        bounds = zip(np.r_[0, done[:-1] + 1], done)
        returns = [(h.reward[a:b + 1].sum(), b) for a, b in bounds]
        best = max(r for r, _ in returns)
        want = next(b for r, b in returns if r >= 0.9 * best) if best > 0 else -1
        assert ends[i] == want
    assert (ends >= 0).any()
    T = 8
    sampler = WindowSampler(ds, window=T, batch_size=64, seed=0, num_actions=5,
                            first_success_focus=1.0)
    for step in range(5):
        hist, start = sampler.indices(step)
        e = ends[hist]
        lo = np.clip(e - T // 2, 0, ds.num_steps - T)
        hi = np.clip(e, 0, ds.num_steps - T)
        assert ((start >= lo) & (start <= hi))[e >= 0].all()
    uniform = WindowSampler(ds, window=T, batch_size=64, seed=0, num_actions=5)
    off = WindowSampler(ds, window=T, batch_size=64, seed=0, num_actions=5,
                        first_success_focus=0.0)
    for a, b in zip(uniform.indices(3), off.indices(3)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="first_success_focus"):
        DistillConfig(dataset="d", out="o", first_success_focus=1.5)


def _params_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_checkpoint_resume_is_exact(darkroom_data, tmp_path, monkeypatch):
    cfg = dict(TINY, dropout=0.1, num_steps=6, checkpoint_every=3)
    full = load_model(distill(DistillConfig(dataset=str(darkroom_data), out=str(tmp_path / "a"), **cfg)))

    # A run killed after its step-3 checkpoint (the sampler fails at step 4) ...
    original = WindowSampler.batch

    def dying(self, step):
        if step == 4:
            raise KeyboardInterrupt("simulated kill")
        return original(self, step)

    monkeypatch.setattr(WindowSampler, "batch", dying)
    with pytest.raises(KeyboardInterrupt):
        distill(DistillConfig(dataset=str(darkroom_data), out=str(tmp_path / "b"), **cfg))
    assert latest_checkpoint(tmp_path / "b")[0] == 3
    assert not (tmp_path / "b" / "model").exists()
    monkeypatch.setattr(WindowSampler, "batch", original)
    # ... restarted with the same command ends exactly where the uninterrupted run did.
    resumed = load_model(distill(DistillConfig(dataset=str(darkroom_data), out=str(tmp_path / "b"), **cfg)))
    assert _params_equal(full.params, resumed.params)
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 7))
    ref = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([x["loss"] for x in lines], [x["loss"] for x in ref], rtol=0, atol=0)


def test_changed_config_refuses_to_resume(darkroom_data, tmp_path):
    distill(DistillConfig(dataset=str(darkroom_data), out=str(tmp_path / "r"), num_steps=1, **{k: v for k, v in TINY.items()}))
    with pytest.raises(ValueError, match="lr"):
        distill(DistillConfig(dataset=str(darkroom_data), out=str(tmp_path / "r"), num_steps=1, **dict(TINY, lr=1e-2)))


def test_loaded_model_reproduces_training_params(darkroom_data, tmp_path):
    run = distill(DistillConfig(dataset=str(darkroom_data), out=str(tmp_path / "m"), num_steps=2, **TINY))
    m = load_model(run)
    assert m.env_name == "darkroom" and m.config.context == 4
    x = StepInputs(obs=jnp.zeros((1, 5, 2), jnp.int32), prev_action=jnp.full((1, 5), 5, jnp.int32),
                   prev_reward=jnp.zeros((1, 5)))
    assert m.apply(x).shape == (1, 5, 5)


_SHARDED = textwrap.dedent("""
    import json, sys
    import jax
    from ad.train import DistillConfig, distill
    cfg = DistillConfig(dataset=sys.argv[1], out=sys.argv[2], num_steps=3, checkpoint_every=3,
                        **json.loads(sys.argv[3]))
    distill(cfg)
    print(json.dumps({"devices": jax.device_count()}))
""")


def test_sharded_training_matches_single_device(darkroom_data, tmp_path):
    """4 forced CPU devices (data parallel) give the same losses as 1 device over 3 steps."""
    cfg = json.dumps(dict(TINY, dropout=0.1))
    losses = {}
    for n in (1, 4):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
                   JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
        out = tmp_path / f"dev{n}"
        proc = subprocess.run([sys.executable, "-c", _SHARDED, str(darkroom_data), str(out), cfg],
                              env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(proc.stdout.strip().splitlines()[-1])["devices"] == n
        losses[n] = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses[1]) == 3
    np.testing.assert_allclose(losses[4], losses[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("starts", [False, True])
def test_cached_rollout_matches_full_forward(darkroom_data, tmp_path, starts):
    """The actions sampled with the KV cache are those a full banded forward would sample."""
    m = load_model(distill(DistillConfig(dataset=str(darkroom_data), out=str(tmp_path / "kv"), num_steps=3,
                                         episode_start_token=starts, prev_obs_token=starts,
                                         episode_return_token=starts, **TINY)))
    env = m.env
    tasks = ev.repeat_tasks(env.tasks("test"), 1)
    key = jax.random.PRNGKey(5)
    r = ev.ad_rollout(m.params, m.config, env, tasks, key, 3 * env.max_episode_steps)
    # Replay: feed the realised stream through the full model; its logits, sampled with
    # the same per-step keys, must give the same actions.
    n, S = r.action.shape
    _, state = jax.vmap(env.reset)(jax.random.split(jax.random.split(key)[0], n), tasks)
    obs_list, state_t = [], state
    step_keys = jax.random.split(jax.random.split(key)[1], S)
    for t in range(S):
        obs_list.append(state_t.pos)
        _, env_key = jax.random.split(step_keys[t])
        _, state_t, *_ = jax.vmap(env.step)(jax.random.split(env_key, n), state_t, r.action[:, t], tasks)
    obs = jnp.stack(obs_list, 1)
    prev_a = jnp.concatenate([jnp.full((n, 1), 5), r.action[:, :-1]], 1)
    prev_r = jnp.concatenate([jnp.zeros((n, 1)), r.reward[:, :-1]], 1)
    first = jnp.concatenate([jnp.ones((n, 1), bool), r.done[:, :-1]], 1)  # 3 episodes
    prev_obs = jnp.concatenate([jnp.zeros((n, 1, 2), obs.dtype), obs[:, :-1]], 1)
    episode_return = running_episode_return(np.asarray(r.reward), np.asarray(first))
    logits = ADTransformer(m.config).apply(
        {"params": m.params}, StepInputs(obs, prev_a, prev_r, first, prev_obs, episode_return),
        train=False)
    act_keys = jax.vmap(lambda k: jax.random.split(k)[0])(step_keys)
    replay = jnp.stack([jax.random.categorical(act_keys[t], logits[:, t]) for t in range(S)], 1)
    np.testing.assert_array_equal(replay, r.action)


def test_gym_rollout_carries_the_episode_return_like_ad_rollout():
    """gym_rollout's plain loop builds the running episode return as ad_rollout's scan does:
    same actions step by step, with a policy that leans hard on that input."""
    import gymnasium

    from ad.model import ModelConfig, init_params
    from envs.darkroom import DarkRoomParams

    env = envs.make("darkroom")
    cfg = ModelConfig.for_env(env, d_model=16, num_layers=1, num_heads=2, mlp_dim=32, context=4,
                              dropout=0.0, episode_start_token=True, prev_obs_token=True,
                              episode_return_token=True)
    params = init_params(cfg, jax.random.key(3))
    # a head that leans to the no-op (action 0) so the agent often stays on the goal
    params = dict(params, head=dict(kernel=params["head"]["kernel"] * 15.0,
                                    bias=params["head"]["bias"].at[0].add(2.0)),
                  return_embed=dict(params["return_embed"],
                                    kernel=params["return_embed"]["kernel"] * 50.0))
    task = DarkRoomParams(goal=jnp.asarray([env.start]))  # the goal is the start cell
    gym_env = gymnasium.make(envs.GYM_IDS["darkroom"], task=jax.tree.map(lambda x: x[0], task))
    key = jax.random.key(11)
    jr = jax.tree.map(np.asarray, ev.ad_rollout(params, cfg, env, task, key, 3 * env.max_episode_steps))
    gr = ev.gym_rollout(params, cfg, gym_env, None, key, 3)
    np.testing.assert_array_equal(gr.action, jr.action[0])
    np.testing.assert_array_equal(gr.reward, jr.reward[0])
    episode_returns = jr.reward[0].reshape(3, -1).sum(1)
    assert episode_returns.max() >= 2, episode_returns  # the running return exceeded 1


def test_by_episode_window():
    curve = np.arange(1, 101, dtype=float)[None]  # episode k has return k
    assert ev.by_episode(curve, 50) == pytest.approx(np.mean(np.arange(46, 56)))
    assert ev.by_episode(curve, 3) == pytest.approx(np.mean(np.arange(1, 9)))


def test_toy_bandit_improves_in_context(tmp_path):
    """End to end on a 2-armed bandit: held-out reward over pulls 51-100 beats pulls 1-10
    by more than 5 standard errors across tasks."""
    data = tmp_path / "bandit"
    collect(CollectConfig(out=data, env="bernoulli-bandit", env_overrides={"num_arms": 2},
                          source="thompson", source_overrides={"num_steps": 100},
                          num_histories=2048, shard_size=1024, verbose=False))
    run = distill(DistillConfig(dataset=str(data), out=str(tmp_path / "run"), context=100, window=100,
                                d_model=32, num_layers=2, num_heads=2, mlp_dim=64, dropout=0.0,
                                batch_size=64, num_steps=250, lr=3e-3, warmup_steps=20,
                                log_every=50, progress=False))
    m = load_model(run)
    env = envs.make("bernoulli-bandit", num_arms=2)
    tasks = ev.eval_tasks(env, "test", 400, jax.random.PRNGKey(11))
    r = ev.ad_rollout(m.params, m.config, env, tasks, jax.random.PRNGKey(12), 100)
    means = np.asarray(tasks.means)
    # expected reward of the chosen arm: a low-variance measure of the policy
    chosen = np.take_along_axis(means, np.asarray(r.action), axis=1)
    early, late = chosen[:, :10].mean(1), chosen[:, 50:].mean(1)
    diff = late - early
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    assert diff.mean() > 5 * se, (diff.mean(), se)
