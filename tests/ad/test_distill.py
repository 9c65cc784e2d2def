"""Distillation loop and in-context evaluation: checkpoints and exact resume, sharded ==
single device, KV-cache rollouts, and a tiny end-to-end bandit run in which the distilled
model improves in context on held-out tasks. (Training windows: test_windows.py.)"""

from __future__ import annotations

import dataclasses
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
from ad.checkpoints import latest_checkpoint, load_model
from ad.config import ArchConfig
from ad.inputs import StepInputs
from ad.model import ADTransformer, init_params
from ad.train import DistillConfig, distill
from ad.windows import WindowSampler
from experiments.collect import CollectConfig, collect

ROOT = Path(__file__).resolve().parents[2]

TINY_ARCH = ArchConfig(context=4, d_model=16, num_layers=1, num_heads=2, mlp_dim=32, dropout=0.0)
TINY = dict(model=TINY_ARCH, window=8, batch_size=8, lr=3e-3, warmup_steps=2, log_every=1,
            progress=False)


def test_rollouts_refuse_a_temperature_that_is_not_positive(tiny_config):
    env = envs.make("darkroom")
    cfg = tiny_config(num_layers=1)
    params = init_params(cfg, jax.random.key(0))
    tasks = jax.tree.map(lambda a: a[:2], env.tasks("test"))
    for t in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            ev.ad_rollout(params, cfg, env, tasks, jax.random.key(1), 4, temperature=t)
        with pytest.raises(ValueError, match="temperature must be > 0"):
            ev.gym_rollout(params, cfg, None, 0, jax.random.key(1), 1, temperature=t)


def _params_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_checkpoint_resume_is_exact(darkroom_data, tmp_path, monkeypatch):
    cfg = dict(TINY, model=dataclasses.replace(TINY_ARCH, dropout=0.1), num_steps=6,
               checkpoint_every=3)
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
    distill(DistillConfig(dataset=str(darkroom_data), out=str(tmp_path / "r"), num_steps=1, **TINY))
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
    cfg = DistillConfig.from_dict(dict(json.loads(sys.argv[3]), dataset=sys.argv[1],
                                       out=sys.argv[2], num_steps=3, checkpoint_every=3))
    distill(cfg)
    print(json.dumps({"devices": jax.device_count()}))
""")


def test_sharded_training_matches_single_device(darkroom_data, tmp_path):
    """4 forced CPU devices (data parallel) give the same losses as 1 device over 3 steps."""
    arch = dataclasses.replace(TINY_ARCH, dropout=0.1)
    cfg = json.dumps(dict(TINY, model=dataclasses.asdict(arch)))
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
    arch = dataclasses.replace(TINY_ARCH, episode_start_token=starts, prev_obs_token=starts)
    m = load_model(distill(DistillConfig(dataset=str(darkroom_data), out=str(tmp_path / "kv"),
                                         num_steps=3, **dict(TINY, model=arch))))
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
    logits = ADTransformer(m.config).apply(
        {"params": m.params}, StepInputs(obs, prev_a, prev_r, first, prev_obs),
        train=False)
    act_keys = jax.vmap(lambda k: jax.random.split(k)[0])(step_keys)
    replay = jnp.stack([jax.random.categorical(act_keys[t], logits[:, t]) for t in range(S)], 1)
    np.testing.assert_array_equal(replay, r.action)


def test_by_episode_window():
    curve = np.arange(1, 101, dtype=float)[None]  # episode k has return k
    assert ev.by_episode(curve, 50) == pytest.approx(np.mean(np.arange(46, 56)))
    assert ev.by_episode(curve, 3) == pytest.approx(np.mean(np.arange(1, 9)))


def test_episodes_to_a_level_uses_the_by_episode_window():
    curve = np.tile(np.arange(1.0, 201.0), (3, 1))  # episode k returns k
    # by episode k (k >= 5) = mean of episodes k-4 .. k+5 = k + 0.5
    assert ev.episodes_to(curve, 10.5) == 10
    assert ev.episodes_to(curve, 10.6) == 11
    assert ev.episodes_to(curve, 3.5) == 1  # by episode 1 = mean of 1..6
    assert ev.episodes_to(curve, 1e3) is None


def test_toy_bandit_improves_in_context(tmp_path):
    """End to end on a 2-armed bandit: held-out reward over pulls 51-100 beats pulls 1-10
    by more than 5 standard errors across tasks."""
    data = tmp_path / "bandit"
    collect(CollectConfig(out=data, env="bernoulli-bandit", env_overrides={"num_arms": 2},
                          source="thompson", source_overrides={"num_steps": 100},
                          num_histories=2048, shard_size=1024, verbose=False))
    arch = ArchConfig(context=100, d_model=32, num_layers=2, num_heads=2, mlp_dim=64, dropout=0.0)
    run = distill(DistillConfig(dataset=str(data), out=str(tmp_path / "run"), model=arch,
                                window=100, batch_size=64, num_steps=250, lr=3e-3,
                                warmup_steps=20, log_every=50, progress=False))
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


def test_a_partial_metrics_line_is_dropped_on_resume(tmp_path):
    """A metrics.jsonl whose last line was cut mid-write (disk full, kill) does not block a
    resume: complete lines up to the checkpoint stay, the partial one and later ones go."""
    from ad.train import _truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 50, "loss": 1.0}\n{"step": 100, "loss": 0.9}\n'
                    '{"step": 150, "loss": 0.8}\n{"step": 200, "lo')
    _truncate_metrics(path, 100)
    assert path.read_text() == '{"step": 50, "loss": 1.0}\n{"step": 100, "loss": 0.9}\n'


def test_snapshots_keep_the_model_at_powers_of_two_without_changing_training(darkroom_data, tmp_path):
    from ad.checkpoints import checkpoint_steps, snapshot_dir, snapshot_steps

    assert checkpoint_steps(6) == [0, 1, 2, 4, 6]
    assert checkpoint_steps(8) == [0, 1, 2, 4, 8]
    cfg = dict(TINY, num_steps=6, checkpoint_every=3)
    plain = load_model(distill(DistillConfig(dataset=str(darkroom_data), out=str(tmp_path / "a"), **cfg)))
    run = distill(DistillConfig(dataset=str(darkroom_data), out=str(tmp_path / "s"), snapshots=True, **cfg))
    assert snapshot_steps(run) == [0, 1, 2, 4, 6]
    assert _params_equal(load_model(run).params, plain.params)  # training unchanged
    assert _params_equal(load_model(snapshot_dir(run, 6)).params, plain.params)
    init = load_model(snapshot_dir(run, 0)).params
    # step 0 is the initialisation (the first update has lr 0 under the linear warm-up)
    assert not _params_equal(init, load_model(snapshot_dir(run, 2)).params)
