"""The one input builder (ad.inputs): its semantics by hand, and proof that every consumer
(the training window sampler, ad_rollout with and without a prompt, gym_rollout) takes the
model's inputs from it, so a new input term added there reaches all of them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from ad import evaluate as ev
from ad import inputs as inp
from ad.config import ModelConfig
from ad.dataset import load_dataset
from ad.model import ADTransformer, init_params
from ad.windows import WindowSampler
from envs.gym import GymnasiumEnv
from experiments.collect import CollectConfig, collect

A = 5


def cfg(**kw) -> ModelConfig:
    base = dict(num_actions=A, obs_encoder="xy", d_model=8, num_layers=2, num_heads=2,
                mlp_dim=16, context=4, dropout=0.0)
    return ModelConfig(**{**base, **kw})


def random_stream(rng, B, T):
    obs = rng.integers(0, 9, (B, T, 2)).astype(np.int32)
    action = rng.integers(0, A, (B, T)).astype(np.int32)
    reward = rng.integers(0, 2, (B, T)).astype(np.float32)
    done = rng.random((B, T)) < 0.2
    return obs, action, reward, done


def test_shift_stream_equals_a_python_loop():
    """prev[t] is step t-1 of the window; the first step reads ``before``, or the
    stream-start record where the window starts its stream."""
    rng = np.random.default_rng(0)
    B, T = 4, 6
    obs, action, reward, done = random_stream(rng, B, T)
    before = inp.Previous(action=rng.integers(0, A, B), reward=rng.random(B).astype(np.float32),
                          done=rng.random(B) < 0.5, obs=rng.integers(0, 9, (B, 2)))
    starts = np.array([True, False, True, False])
    prev = inp.shift_stream(obs, action, reward, done, A, before, starts)
    for b in range(B):
        for t in range(T):
            if t > 0:
                want = (action[b, t - 1], reward[b, t - 1], done[b, t - 1], obs[b, t - 1])
            elif starts[b]:
                want = (A, 0.0, True, np.zeros(2))
            else:
                want = (before.action[b], before.reward[b], before.done[b], before.obs[b])
            got = (prev.action[b, t], prev.reward[b, t], prev.done[b, t], prev.obs[b, t])
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w)
    # no ``before``: every window starts its stream
    first = inp.shift_stream(obs, action, reward, done, A)
    assert (first.action[:, 0] == A).all() and first.done[:, 0].all()
    assert (first.reward[:, 0] == 0).all() and (first.obs[:, 0] == 0).all()


def test_numpy_and_jax_builders_agree_and_inputs_follow_the_config():
    rng = np.random.default_rng(1)
    obs, action, reward, done = random_stream(rng, 3, 5)
    plain = inp.stream_inputs(obs, action, reward, done, cfg())
    assert plain.episode_start is None and plain.prev_obs is None  # the paper's (o, a, r)
    full = cfg(episode_start_token=True, prev_obs_token=True)
    host = inp.stream_inputs(obs, action, reward, done, full)
    dev = jax.jit(lambda *a: inp.stream_inputs(*a, full))(obs, action, reward, done)
    assert isinstance(host.prev_action, np.ndarray)
    for h, d in zip(jax.tree.leaves(host), jax.tree.leaves(dev)):
        np.testing.assert_array_equal(h, np.asarray(d))
    np.testing.assert_array_equal(host.episode_start, inp.episode_start_from_done(done))
    np.testing.assert_array_equal(host.prev_obs[:, 1:], obs[:, :-1])


# --------------------------------------------------------------------------------------
# A new input term, added in the one builder, reaches every consumer
# --------------------------------------------------------------------------------------
def dummy_term(prev: inp.Previous):
    """The test's new input: 'the previous action was 1' (not the episode start)."""
    return prev.action == 1


@pytest.fixture
def patched_builder(monkeypatch):
    """The builder with a new term, delivered through the model's episode-start input
    (so the model embeds it with no other change): what a user adding an input does in
    ``ad.inputs.build_inputs``. Jit caches are cleared so no consumer keeps an old trace."""
    original = inp.build_inputs

    def with_term(obs, prev, config):
        x = original(obs, prev, config)
        return x._replace(episode_start=dummy_term(prev))

    monkeypatch.setattr(inp, "build_inputs", with_term)
    jax.clear_caches()
    yield original
    jax.clear_caches()


@pytest.fixture(scope="module")
def memory_dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "dr"
    collect(CollectConfig(out=path, env="darkroom", source="memory",
                          source_overrides=dict(num_steps=100), num_histories=8,
                          shard_size=8, verbose=False))
    return load_dataset(path)


def test_the_sampler_delivers_a_new_term(patched_builder, memory_dataset):
    config = cfg(episode_start_token=True)
    batch = WindowSampler(memory_dataset, config, window=10, batch_size=16, seed=0).batch(3)
    np.testing.assert_array_equal(batch.inputs.episode_start, batch.inputs.prev_action == 1)
    assert batch.inputs.episode_start.any() and not batch.inputs.episode_start.all()


def test_the_rollouts_and_prompting_deliver_a_new_term(patched_builder, memory_dataset):
    """ad_rollout (KV cache, closed loop), with a prompt, and gym_rollout all act on the
    new term: their policies equal a full forward over the stream they produced, with the
    inputs built by the patched builder, and differ from one built without the term."""
    env = envs.make("darkroom")
    config = cfg(episode_start_token=True)
    params = init_params(config, jax.random.key(0))
    params = jax.tree.map(lambda p: p + 0.5 * jax.random.normal(jax.random.key(1), p.shape),
                          params)  # weights large enough that every input moves the logits
    tasks = jax.tree.map(lambda x: x[:3], env.tasks("test"))
    forward = lambda x: jax.nn.softmax(ADTransformer(config).apply(  # noqa: E731
        {"params": params}, x, train=False))

    def replay(obs, action, reward, done, builder):
        prev = inp.shift_stream(obs, action, reward, done, A)
        return np.asarray(forward(builder(obs, prev, config)))

    r = ev.ad_rollout(params, config, env, tasks, jax.random.key(2), 40, record_policy=True)
    stream = (np.asarray(r.obs), np.asarray(r.action), np.asarray(r.reward), np.asarray(r.done))
    np.testing.assert_allclose(r.policy, replay(*stream, inp.build_inputs), atol=1e-5)
    assert np.abs(np.asarray(r.policy) - replay(*stream, patched_builder)).max() > 1e-3

    # prompting: a recorded history fed through the cache first, then the model acts
    prompt = jax.tree.map(lambda x: jnp.asarray(x[:3, :20]),
                          memory_dataset.read_windows(np.arange(3), np.zeros(3, int), 20))
    r2 = ev.ad_rollout(params, config, env, tasks, jax.random.key(3), 12, prompt=prompt,
                       record_policy=True)
    done_p = np.asarray(prompt.terminated | prompt.truncated)
    joined = [np.concatenate([np.asarray(p), np.asarray(q)], axis=1) for p, q in zip(
        (prompt.obs, prompt.action, prompt.reward, done_p),
        (r2.obs, r2.action, r2.reward, r2.done))]
    np.testing.assert_allclose(r2.policy, replay(*joined, inp.build_inputs)[:, 20:], atol=1e-5)

    # gym_rollout: the same actions as ad_rollout on the same task and key
    gym_env = GymnasiumEnv("darkroom")
    gym_env.reset(options={"task": jax.tree.map(lambda x: np.asarray(x[0]), tasks)})
    g = ev.gym_rollout(params, config, gym_env, None, jax.random.key(2), 2)
    np.testing.assert_array_equal(g.action, np.asarray(r.action)[0, :len(g.action)])
