"""The model zoo: shipped checkpoints, catalogue checks, the vmapped trainer, rebuilds."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ad.zoo
from ad.checkpoints import load_model
from ad.integrity import file_digest
from ad.model import ADTransformer
from ad.train_step import make_optimizer, make_train_step
from ad.zoo import build as zb

WEIGHTS = ad.zoo.WEIGHTS


def _fingerprints() -> dict:
    out = {}
    for name in ("fingerprints.npz", "handbuilt_fingerprints.npz"):
        if (WEIGHTS / name).exists():
            out.update(dict(np.load(WEIGHTS / name)))
    return out


def test_every_shipped_checkpoint_matches_its_fingerprint():
    """Load every seed of every entry through the checked loader; its logits on the stored
    input equal the stored fingerprint (bitwise on this CPU kind; 1e-5 relative elsewhere)."""
    prints = _fingerprints()
    entries = ad.zoo.list()
    assert any(e.handbuilt for e in entries) and any(not e.handbuilt for e in entries)
    checked = 0
    for e in entries:
        for seed in e.seeds:
            model = load_model(e.path / f"seed{seed}")
            want = prints[f"{e.name}/seed{seed}"]
            got = zb.fingerprint(model)
            scale = max(1.0, float(np.abs(want).max()))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale,
                                       err_msg=f"{e.name} seed {seed}")
            checked += 1
    assert checked == len(prints)  # no fingerprint without a shipped model, and vice versa


def test_shipped_weights_are_the_manifests_final_checkpoints():
    manifest = json.loads((WEIGHTS / "manifest.json").read_text())
    for e in [e for e in ad.zoo.list() if not e.handbuilt]:
        for seed in e.seeds:
            final = f"step_{e.steps[-1]:05d}"
            assert manifest["checkpoints"][e.name][str(seed)][final] == list(file_digest(e.path / f"seed{seed}" / "model" / "params.msgpack")), e.name
            assert list(manifest["checkpoints"][e.name][str(seed)]) == \
                [f"step_{s:05d}" for s in e.steps]


def test_load_checks_arguments_against_the_catalogue():
    fam = next(e.family for e in ad.zoo.list() if not e.handbuilt)
    entries = ad.zoo.list(fam)
    with pytest.raises(ValueError, match="families"):
        ad.zoo.load("no-such-family")
    with pytest.raises(ValueError, match=r"valid values: .*'d_model': \["):
        ad.zoo.load(fam, d_model=12345)
    if len(entries) > 1:
        with pytest.raises(ValueError, match="entries match"):
            ad.zoo.load(fam)
    e = entries[0]
    arch = dict(d_model=e.d_model, num_layers=e.num_layers, num_heads=e.num_heads,
                mlp_dim=e.mlp_dim)
    with pytest.raises(ValueError, match="has seeds"):
        ad.zoo.load(fam, **arch, seed=99)
    with pytest.raises(ValueError, match="checkpoints at steps"):
        ad.zoo.load(fam, **arch, step=3)
    with pytest.raises(TypeError, match="unknown argument"):
        ad.zoo.find(fam, width=8)
    default = ad.zoo.load(fam, **arch)  # the best seed on validation, never held-out
    best = load_model(e.path / f"seed{e.best_seed}")
    for a, b in zip(jax.tree.leaves(default.params), jax.tree.leaves(best.params)):
        np.testing.assert_array_equal(a, b)
    assert default.config.d_model == e.d_model and default.config.mlp_dim == e.mlp_dim
    raw = json.loads((WEIGHTS / "catalogue.json").read_text())["entries"][e.name]
    val = [v["mean"] for v in raw["validation"]]
    assert e.best_seed == int(np.argmin(val) if raw["metric"] == "regret" else np.argmax(val))
    assert "Default seed" in ad.zoo.card(fam, **arch)


def test_every_trained_family_catalogues_its_metric_and_a_default_seed_from_validation():
    """Regret families pick the lowest validation score, return families the highest."""
    raw = json.loads((WEIGHTS / "catalogue.json").read_text())
    for name, e in raw["entries"].items():
        fam = raw["families"][e["family"]]
        assert e["metric"] == fam["metric"] == zb.FAMILIES[e["family"]].metric, name
        val = [v["mean"] for v in e["validation"]]
        pick = np.argmin if e["metric"] == "regret" else np.argmax
        assert e["best_seed"] == int(pick(val)), name
        assert len(e["curve"]) == len(e["seeds"]) and \
            all(len(c) == len(e["steps"]) for c in e["curve"]), name


def test_darkroom_scores_are_returns_by_episode_50_per_rollout_and_validation_is_training_goals():
    """The vmapped score of stacked models equals each model's rollout scored on its own
    (episode_curve + by_episode), and validation never uses a held-out goal."""
    import dataclasses

    import envs
    from ad.evaluate import ad_rollout, by_episode, episode_curve
    from ad.model import init_params

    fam = dataclasses.replace(zb.FAMILIES["darkroom"], episodes=12, report_episode=6)
    env = envs.make(fam.env, **fam.env_overrides)
    cfg = zb.model_config(fam, zb.Arch(8, 1, 2, 0), env)
    init = jax.jit(init_params, static_argnums=(0, 2))
    models = [init(cfg, jax.random.PRNGKey(s), 8) for s in (0, 1)]
    stack = jax.tree.map(lambda *xs: jnp.stack(xs), *models)
    tasks = zb.heldout_set(fam, env, curve=True)
    assert tasks.goal.shape[0] == 16 * fam.curve_rollouts
    key = jax.random.key(3)
    got = zb.model_scores(stack, cfg, fam, env, tasks, key)
    for i, params in enumerate(models):
        roll = ad_rollout(params, cfg, env, tasks, key, 12 * env.max_episode_steps)
        curve = episode_curve(roll, 12)
        want = [by_episode(curve[j:j + 1], 6) for j in range(curve.shape[0])]
        np.testing.assert_allclose(got[i], want, rtol=1e-6)
    val = zb.validation_tasks(fam, env)
    held = {tuple(g) for g in np.asarray(env.tasks("test").goal).tolist()}
    train = {tuple(g) for g in np.asarray(val.goal).tolist()}
    assert train and not held & train
    assert val.goal.shape[0] == env.tasks("train").goal.shape[0] * fam.curve_rollouts


def test_a_family_with_an_unknown_metric_or_too_few_episodes_is_refused():
    import dataclasses

    with pytest.raises(ValueError, match="metric must be"):
        dataclasses.replace(zb.FAMILIES["darkroom"], metric="accuracy")
    with pytest.raises(ValueError, match="episodes >= 55"):
        dataclasses.replace(zb.FAMILIES["darkroom"], episodes=50)


def test_checkpoint_steps():
    assert zb.checkpoint_steps(512) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    assert zb.checkpoint_steps(100) == [0, 1, 2, 4, 8, 16, 32, 64, 100]


def test_vmapped_step_equals_the_per_seed_steps():
    """Five seeds in one vmapped call = the project's train step run seed by seed."""
    import envs
    from ad.train_step import Batch

    env = envs.make("bernoulli-bandit", num_arms=2)
    fam = zb.Family("t", "bernoulli-bandit", {"num_arms": 2}, context=8)
    cfg = zb.model_config(fam, zb.Arch(8, 1, 2, 16), env)
    opt = make_optimizer(1e-2, 1, 10)
    seeds = [0, 3]
    rng = np.random.default_rng(0)
    from ad.inputs import dummy_inputs

    def batch(i):
        inp = dummy_inputs(cfg, 4, 8)._replace(
            prev_action=jnp.asarray(rng.integers(0, 2, (4, 8)), jnp.int32),
            prev_reward=jnp.asarray(rng.integers(0, 2, (4, 8)), jnp.float32))
        return Batch(inp, jnp.asarray(rng.integers(0, 2, (4, 8)), jnp.int32),
                     jnp.ones((4, 8), jnp.float32))
    batches = [batch(i) for i in range(len(seeds))]
    from ad.model import init_params
    from ad.train_step import init_train_state

    init = jax.jit(init_params, static_argnums=(0, 2))  # (zb.init_states is eager: slow)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[
        init_train_state(init(cfg, jax.random.PRNGKey(s), 8), opt, jax.random.PRNGKey(s + 1))
        for s in seeds])
    vstep = zb.make_vmapped_step(cfg, opt)
    single = jax.jit(make_train_step(ADTransformer(cfg), opt))
    per_seed = [jax.tree.map(lambda x: x[i], stacked) for i in range(len(seeds))]
    stacked, _ = vstep(stacked, jax.tree.map(lambda *xs: jnp.stack(xs), *batches))
    for i in range(len(seeds)):
        state, _ = single(per_seed[i], batches[i])
        for a, b in zip(jax.tree.leaves(state.params),
                        jax.tree.leaves(jax.tree.map(lambda x: x[i], stacked.params))):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # seeds differ (the vmap did not broadcast one seed)
    p0, p1 = (jax.tree.leaves(jax.tree.map(lambda x: x[i], stacked.params))[0] for i in (0, 1))
    assert not np.allclose(p0, p1)


@pytest.mark.slow
def test_rebuild_of_the_smallest_configuration_reproduces_the_manifest(tmp_path):
    """The documented rebuild (collect + five vmapped seeds) gives every checkpoint of the
    smallest bandit configuration with the manifest's hash (same versions and CPU kind)."""
    e = min((e for e in ad.zoo.list() if not e.handbuilt), key=lambda e: e.num_params)
    arch = e.name.split("/", 1)[1]
    manifest = json.loads((WEIGHTS / "manifest.json").read_text())
    if manifest["environment"]["processor"] != zb._cpu_kind():
        pytest.skip("hashes are recorded for another CPU kind")
    assert zb.verify(e.family, arch, tmp_path) == []
    assert len(list((tmp_path / "verify").rglob("params.msgpack"))) == \
        len(e.seeds) * len(e.steps)
