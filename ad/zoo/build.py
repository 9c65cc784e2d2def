"""Build the model zoo: collect, distill five seeds per configuration in one vmapped call,
checkpoint, evaluate on held-out tasks, choose the best seed on validation tasks, ship.

    python -m ad.zoo.build                      # the whole catalogue (~3.1 h on 2 cores: docs/zoo)
    python -m ad.zoo.build --family bandit2 --only d8-L1-H2-M0 --verify   # check a rebuild

The algorithm, top to bottom (``build``):
1. Collect each family's learning histories with ``experiments.collect`` (UCB1 on
   Bernoulli bandits, 100 pulls; PPO on Dark Room, every 8th episode kept; deterministic:
   history i depends on (seed, i)).
2. For each configuration, the five seeds train together: ``jax.jit(jax.vmap(train_step))``
   of the project's one train step (``ad.train_step.make_train_step``: same loss, same
   optimiser) over stacked train states; seed ``s`` is initialised exactly as
   ``ad.train.distill(seed=s)`` does and reads the batches of ``WindowSampler(seed=s)``.
3. Checkpoints (sealed ``model/`` dirs, ``ad.checkpoints.save_model``) at step 0, every
   power of two and the final step, under ``<out>/<family>/<arch>/seed<s>/step_<n>``.
4. Evaluation (``ad.evaluate.ad_rollout``, sampling at temperature 1, vmapped over seeds
   and checkpoints), the family's score per rollout: bandits, pseudo-regret over 100 pulls
   (sum of ``max(means) - means[a_t]``; lower is better); Dark Room, the return "by
   episode 50" (``ad.evaluate.by_episode``: mean of episodes 46-55; higher is better). On
   held-out tasks (bandits: the env's test key stream; Dark Room: its held-out goals) at
   every checkpoint, and on *validation* tasks for the final step only (bandits: a third
   key stream, ``fold_in(key, 2)`` of the env's own mean sampler, neither the train nor
   the test stream; Dark Room: the training goals, as it has no third set). The default
   seed of an entry is the best on validation, never on held-out tasks. Baselines on the
   same held-out tasks: the source learning from scratch, uniform random, the optimum.
5. Shipping: the final checkpoint of every seed is copied to ``ad/zoo/weights/`` with
   the catalogue (``catalogue.json``), a model card per entry, the manifest of hashes of
   *every* checkpoint (``manifest.json``: a rebuild is verifiably the same zoo on the same
   package versions and CPU kind) and logit fingerprints on a stored input.

Resumable per configuration: a finished one (its ``result.json`` exists) is skipped.
``--verify`` rebuilds into a scratch folder and compares every checkpoint's hash with
the committed manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ad.checkpoints import checkpoint_steps, load_model, save_model
from ad.config import ArchConfig, ModelConfig
from ad.evaluate import (ad_rollout, by_episode_rows, episode_curve, eval_tasks, mean_and_ci,
                         random_rollout, repeat_tasks, source_learning)
from ad.integrity import file_digest
from ad.model import ADTransformer, init_params
from ad.train import open_training_dataset
from ad.train_step import TrainState, init_train_state, make_optimizer, make_train_step
from ad.utils import atomic_write_text, provenance
from ad.windows import Prefetcher, WindowSampler
from source_agents import bandits

PyTree = Any
WEIGHTS = Path(__file__).parent / "weights"
DEFAULT_OUT = Path("/work/scratch/zoo") if Path("/work/scratch").is_dir() else Path("zoo-build")
NUM_SEEDS = 5
FINGERPRINT_STEPS = 32  # length of the stored input whose logits fingerprint a model


@dataclasses.dataclass(frozen=True)
class Family:
    """A task family of the zoo: its env, source, data and training recipe."""

    name: str
    env: str
    env_overrides: dict
    source: str = "ucb"  # the source every model of the family is distilled from
    source_overrides: dict = dataclasses.field(default_factory=lambda: {"num_steps": 100})
    histories: int = 20_000  # learning histories collected (train split)
    subsample_every: int = 1  # keep every k-th episode of a history (the paper's Dark Room trick)
    context: int = 100  # c = T: a window is a whole 100-pull history (as the paper setting)
    window: int = 100  # steps per training window (bandits: = context, one history)
    obs_encoder: str = ""  # "" = the env's default (ModelConfig.for_env)
    num_steps: int = 512  # optimiser steps (a power of two: the last checkpoint is one)
    batch_size: int = 64  # windows per step and seed (the paper setting: 1500 x 128; the
    #   zoo's budget, ~1 h for the bandits on 2 shared cores, buys 512 x 64)
    lr: float = 2e-3  # higher than the standard 1e-3: small models, short schedule
    warmup_steps: int = 32
    metric: str = "regret"  # "regret": pseudo-regret over the episodes (= pulls; lower is
    #   better); "return": return by episode ``report_episode`` (higher is better)
    episodes: int = 100  # in-context episodes per evaluation rollout (bandits: pulls)
    report_episode: int = 50  # "return": the score is ``by_episode(curve, k)`` at this k
    heldout_tasks: int = 1000  # test split: the figures the catalogue reports
    curve_tasks: int = 200  # held-out tasks for the per-checkpoint curve (first of them)
    validation_tasks: int = 500  # third key stream: selects the default seed
    rollouts_per_task: int = 1  # finite task sets (Dark Room's goals): held-out rollouts
    curve_rollouts: int = 1  # finite task sets: rollouts per goal for the per-checkpoint
    #   curve and for validation (every goal of the split)

    def __post_init__(self):
        if self.metric not in ("regret", "return"):
            raise ValueError(f"Family {self.name!r}: metric must be 'regret' or 'return', got "
                             f"{self.metric!r}")
        if self.metric == "return" and self.report_episode + 5 > self.episodes:
            raise ValueError(f"Family {self.name!r}: report_episode={self.report_episode} needs "
                             f"episodes >= {self.report_episode + 5} (by episode k averages "
                             f"episodes k-4..k+5), got episodes={self.episodes}")

    @property
    def lower_is_better(self) -> bool:
        return self.metric == "regret"

    @property
    def data_dir(self) -> str:
        return f"data/{self.name}"


@dataclasses.dataclass(frozen=True, order=True)
class Arch:
    """One catalogued architecture (the rest of ``ArchConfig`` is the family's)."""

    d_model: int
    num_layers: int
    num_heads: int
    mlp_dim: int  # 0: attention-only

    @property
    def name(self) -> str:
        return f"d{self.d_model}-L{self.num_layers}-H{self.num_heads}-M{self.mlp_dim}"


FAMILIES = {
    "bandit2": Family("bandit2", "bernoulli-bandit", {"num_arms": 2}),
    "bandit5": Family("bandit5", "bernoulli-bandit", {"num_arms": 5}),
    # The README's Dark Room setting (PPO, 1,040 histories on the 65 training goals, every
    # 8th episode; band of 3 episodes, windows of 6) at a quarter of its training budget
    # (1,024 x 64 windows per seed vs 2,000 x 128) and its learning rate, no dropout.
    # Score: return by episode 50 on the 16 held-out goals x 8 rollouts.
    "darkroom": Family("darkroom", "darkroom", {}, source="ppo", source_overrides={},
                       histories=1040, subsample_every=8, context=60, window=120,
                       obs_encoder="xy", num_steps=1024, batch_size=64, lr=1e-3,
                       warmup_steps=64, metric="return", episodes=55, report_episode=50,
                       heldout_tasks=16, rollouts_per_task=8, curve_rollouts=2),
}
# The same from R-max, the fast tabular learner (the README's darkroom-rmax data: 1,040
# histories of 100 episodes, every 2nd kept), same models, training and score: does a source
# that exploits at once make in-context learning cheaper to distil?
# Twice the Dark Room budget (2,048 steps): at 1,024 every model's held-out curve was still
# climbing steeply and none reached the frontier's bar (the standard model 12.84 of 16.62).
FAMILIES["darkroom-rmax"] = dataclasses.replace(
    FAMILIES["darkroom"], name="darkroom-rmax", source="rmax",
    source_overrides={"num_steps": 2000}, subsample_every=2, num_steps=2048)

# Bandits: tiny (142 parameters) to the standard model (d 64, 2 layers, 4 heads, MLP 256),
# attention-only (mlp 0) and with MLPs; head dims stay even (RoPE).
_LARGE = (Arch(32, 2, 2, 64), Arch(64, 2, 4, 256))
_LADDER = (Arch(4, 1, 1, 0), Arch(8, 1, 2, 0), Arch(8, 1, 2, 16), Arch(16, 1, 2, 0),
           Arch(16, 2, 2, 0), Arch(16, 2, 2, 32)) + _LARGE
# Dark Room: ~600 parameters to the standard model (~102k).
_DARKROOM_LADDER = (Arch(8, 1, 2, 0), Arch(16, 1, 2, 0), Arch(16, 2, 2, 32)) + _LARGE
CATALOGUE = {"bandit2": _LADDER, "bandit5": _LADDER, "darkroom": _DARKROOM_LADDER,
             "darkroom-rmax": _DARKROOM_LADDER}


def model_config(family: Family, arch: Arch, env) -> ModelConfig:
    return ModelConfig.for_env(env, ArchConfig(
        context=family.context, d_model=arch.d_model, num_layers=arch.num_layers,
        num_heads=arch.num_heads, mlp_dim=arch.mlp_dim, dropout=0.0,
        obs_encoder=family.obs_encoder))


def num_params(params: PyTree) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(params)))


# ----------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------
def collect_family(family: Family, out: Path) -> Path:
    """The family's training histories (resumes; a finished dataset is reused)."""
    from experiments.collect import CollectConfig, collect

    return collect(CollectConfig(out=out / family.data_dir, env=family.env,
                                 env_overrides=family.env_overrides, source=family.source,
                                 source_overrides=family.source_overrides,
                                 num_histories=family.histories,
                                 subsample_every=family.subsample_every, verbose=False))


def validation_tasks(family: Family, env, seed: int = 0) -> PyTree:
    """Tasks that select the default seed, never the held-out ones. Bandits: a third key
    stream, ``fold_in(key_i, 2)`` through the env's own mean sampler (train draws
    ``fold_in(key, 0)``, test ``fold_in(key, 1)``: envs/bandits.py). Finite task sets (Dark
    Room's goals have only a train and a test split): every training goal."""
    if env.finite_tasks:
        return repeat_tasks(env.tasks("train"), family.curve_rollouts)
    from envs.bandits import BanditParams

    keys = jax.random.split(jax.random.key(seed), family.validation_tasks)
    return BanditParams(means=jax.vmap(lambda k: env._draw_means(jax.random.fold_in(k, 2)))(keys))


def heldout_set(family: Family, env, curve: bool = False) -> PyTree:
    """The held-out tasks the catalogue reports (``curve``: the per-checkpoint subset)."""
    tasks = eval_tasks(env, "test", family.heldout_tasks, jax.random.key(0))
    if env.finite_tasks:
        return repeat_tasks(tasks, family.curve_rollouts if curve else family.rollouts_per_task)
    return jax.tree.map(lambda x: x[:family.curve_tasks], tasks) if curve else tasks


# ----------------------------------------------------------------------------------------
# Training: five seeds, one vmapped step
# ----------------------------------------------------------------------------------------
class SeedBatches:
    """Batch ``s`` of every seed's ``WindowSampler``, stacked on a leading seed axis."""

    def __init__(self, samplers: list[WindowSampler]):
        self.samplers = samplers

    def batch(self, step: int):
        return jax.tree.map(lambda *xs: np.stack(xs), *(s.batch(step) for s in self.samplers))


def init_states(config: ModelConfig, optimizer, seeds, window: int) -> TrainState:
    """Stacked train states; seed s as ``ad.train.distill(seed=s)`` initialises it."""
    states = []
    for seed in seeds:  # eager, as distill: a jitted init differs in the last bits
        init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
        states.append(init_train_state(init_params(config, init_key, window), optimizer,
                                       dropout_key))
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def make_vmapped_step(config: ModelConfig, optimizer):
    """The project's train step, vmapped over the seed axis of state and batch."""
    return jax.jit(jax.vmap(make_train_step(ADTransformer(config), optimizer)),
                   donate_argnums=0)


def train_seeds(family: Family, arch: Arch, dataset, out_dir: Path, seeds=range(NUM_SEEDS),
                num_steps: int | None = None, progress: bool = True) -> dict:
    """Train the seeds of one configuration together; write every checkpoint; return
    ``{"wall_s", "loss"}`` (the final loss per seed)."""
    env = dataset.env
    cfg = model_config(family, arch, env)
    total = family.num_steps
    stop = total if num_steps is None else num_steps  # a partial run (tests) stops early
    optimizer = make_optimizer(family.lr, min(family.warmup_steps, total - 1), total, 1e-4, 1.0)
    state = init_states(cfg, optimizer, list(seeds), family.window)
    step_fn = make_vmapped_step(cfg, optimizer)
    batches = SeedBatches([WindowSampler(dataset, cfg, family.window, family.batch_size, s)
                           for s in seeds])
    save_at = set(checkpoint_steps(total))
    t0 = time.time()

    def save(step: int):
        params = jax.device_get(state.params)
        for i, s in enumerate(seeds):
            save_model(out_dir / f"seed{s}" / f"step_{step:05d}",
                       cfg, jax.tree.map(lambda x: x[i], params), env=dataset.spec.env,
                       env_overrides=dataset.spec.env_overrides, dataset=family.data_dir,
                       source=dataset.spec.source, dataset_id=dataset.content_id)

    save(0)
    metrics = None
    prefetch = Prefetcher(batches, 0, stop, jax.devices()[0])  # host reads overlap steps
    try:
        for step in tqdm(range(stop), desc=f"{family.name} {arch.name}", disable=not progress,
                         unit="step", leave=False):
            state, metrics = step_fn(state, prefetch.next())
            if step + 1 in save_at:
                save(step + 1)
    finally:
        prefetch.close()
    loss = np.asarray(jax.device_get(metrics["loss"])).tolist() if metrics else []
    return {"wall_s": time.time() - t0, "loss": loss}


# ----------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------
class Score(NamedTuple):
    """A family's score over rollouts (``Family.metric``): mean and 95% half-width."""

    mean: float
    ci: float  # 95% half-width over rollouts

    @classmethod
    def of(cls, per_task: np.ndarray) -> "Score":
        m, ci = mean_and_ci(np.asarray(per_task, np.float64)[:, None])
        return cls(float(m[0]), float(ci[0]))


def pseudo_regret(means: jax.Array, actions: jax.Array) -> jax.Array:
    """(N,) cumulative pseudo-regret over the pulls: the bandit sources' per-pull
    ``source_agents.bandits.pseudo_regret`` summed; means (N, A), actions (N, S)."""
    return bandits.pseudo_regret(means, actions).sum(-1)


def model_regret(params_stack: PyTree, config: ModelConfig, env, tasks, key,
                 pulls: int) -> np.ndarray:
    """(M, N) pseudo-regret of M stacked models on N tasks: one vmapped rollout."""
    def one(params):
        roll = ad_rollout(params, config, env, tasks, key, pulls)
        return pseudo_regret(tasks.means, roll.action)
    return np.asarray(jax.jit(jax.vmap(one))(params_stack))


def model_scores(params_stack: PyTree, config: ModelConfig, family: Family, env, tasks,
                 key) -> np.ndarray:
    """(M, N) score (``family.metric``) of M stacked models on N tasks, one vmapped rollout
    of ``family.episodes`` episodes each."""
    steps = family.episodes * env.max_episode_steps
    if family.metric == "regret":
        return model_regret(params_stack, config, env, tasks, key, steps)
    roll = jax.jit(jax.vmap(lambda p: ad_rollout(p, config, env, tasks, key, steps)))(
        params_stack)
    m, n = roll.reward.shape[:2]
    flat = jax.tree.map(lambda x: x.reshape(m * n, *x.shape[2:]), roll)
    return episode_score(family, episode_curve(flat, family.episodes)).reshape(m, n)


def episode_score(family: Family, curve: np.ndarray) -> np.ndarray:
    """Per-row "return by episode k" of (N, E) episode returns."""
    return by_episode_rows(curve, family.report_episode)


def baselines(family: Family, env, tasks, key) -> dict:
    """Source, random and optimum scores on ``tasks`` (per-task arrays)."""
    import source_agents

    source = source_agents.get(family.source)
    config = source_agents.make_config(source, family.env, **family.source_overrides)
    history, curve = source_learning(source, config, env, tasks, key, family.episodes)
    if family.metric == "regret":
        src = np.asarray(pseudo_regret(tasks.means, history.action[:, :family.episodes]))
        rand = np.asarray((tasks.means.max(-1) - tasks.means.mean(-1)) * family.episodes)
        return {"source": src, "random": rand, "optimum": np.zeros_like(rand)}
    steps = family.episodes * env.max_episode_steps
    rand = episode_curve(random_rollout(env, tasks, jax.random.fold_in(key, 1), steps),
                         family.episodes)
    return {"source": episode_score(family, curve), "random": episode_score(family, rand),
            "optimum": np.asarray(jax.vmap(env.optimal_return)(tasks))}


def best_seed(family: Family, seeds, validation_means) -> int:
    """The default seed: the best validation score (never a held-out one)."""
    pick = np.argmin if family.lower_is_better else np.argmax
    return int(list(seeds)[int(pick(validation_means))])


def evaluate_entry(family: Family, arch: Arch, out_dir: Path, seeds=range(NUM_SEEDS)) -> dict:
    """Held-out score of every seed at every checkpoint, validation score at the end."""
    steps = checkpoint_steps(family.num_steps)
    models = [[load_model(out_dir / f"seed{s}" / f"step_{n:05d}") for n in steps]
              for s in seeds]
    cfg, env = models[0][0].config, models[0][0].env
    stack = jax.tree.map(lambda *xs: jnp.stack(xs), *[m.params for row in models for m in row])
    final = jax.tree.map(lambda *xs: jnp.stack(xs), *[row[-1].params for row in models])
    key = jax.random.key(1)
    curve = model_scores(stack, cfg, family, env, heldout_set(family, env, curve=True), key)
    curve = curve.mean(-1).reshape(len(models), len(steps))
    test = model_scores(final, cfg, family, env, heldout_set(family, env), key)
    val = model_scores(final, cfg, family, env, validation_tasks(family, env), key)
    return {"steps": steps, "curve": curve.tolist(),
            "heldout": [Score.of(r)._asdict() for r in test],
            "validation": [Score.of(r)._asdict() for r in val],
            "best_seed": best_seed(family, seeds, val.mean(-1)),
            "num_params": num_params(models[0][-1].params)}


# ----------------------------------------------------------------------------------------
# Fingerprints, manifest, catalogue
# ----------------------------------------------------------------------------------------
def fingerprint_inputs(config: ModelConfig, key: int = 0):
    """A fixed random stream (actions, Bernoulli rewards and, for envs with observations,
    uniform cells) of 2 x FINGERPRINT_STEPS steps."""
    from ad.inputs import dummy_inputs

    rng = np.random.default_rng(key)
    base = dummy_inputs(config, 2, FINGERPRINT_STEPS)
    prev_action = rng.integers(0, config.num_actions, (2, FINGERPRINT_STEPS)).astype(np.int32)
    prev_action[:, 0] = config.num_actions  # stream start: the "none" action
    prev_reward = rng.integers(0, 2, (2, FINGERPRINT_STEPS)).astype(np.float32)
    prev_reward[:, 0] = 0.0
    base = base._replace(prev_action=jnp.asarray(prev_action),
                         prev_reward=jnp.asarray(prev_reward))
    if config.obs_num_values > 1 and config.obs_encoder in ("cell", "xy", "discrete"):
        # drawn after the bandits' arrays, so their stored fingerprints stay valid
        obs = rng.integers(0, config.obs_num_values, base.obs.shape).astype(np.int32)
        base = base._replace(obs=jnp.asarray(obs))
    return base


@functools.lru_cache(maxsize=None)
def _forward(config: ModelConfig):
    return jax.jit(lambda params, inputs: ADTransformer(config).apply(
        {"params": params}, inputs, train=False))


def fingerprint(model) -> np.ndarray:
    """The model's logits on ``fingerprint_inputs`` (2, FINGERPRINT_STEPS, A)."""
    return np.asarray(_forward(model.config)(model.params, fingerprint_inputs(model.config)))


def entry_name(family: str, arch: Arch) -> str:
    return f"{family}/{arch.name}"


def checkpoint_hashes(out_dir: Path, seeds=range(NUM_SEEDS)) -> dict:
    """``{seed: {step: [size, blake2b] of params.msgpack}}`` of every checkpoint."""
    return {str(s): {p.name: list(file_digest(p / "model" / "params.msgpack"))
                     for p in sorted((out_dir / f"seed{s}").glob("step_*"))}
            for s in seeds}


def environment_record() -> dict:
    import flax
    import optax

    return {"jax": jax.__version__, "jaxlib": jax.lib.__version__ if hasattr(jax, "lib")
            else "", "flax": flax.__version__, "optax": optax.__version__,
            "numpy": np.__version__, "machine": platform.machine(),
            "processor": _cpu_kind(), "backend": jax.default_backend()}


def _cpu_kind() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def score_text(family: Family) -> dict:
    """Words for the family's score and task sets (cards, tables)."""
    if family.metric == "regret":
        return {"score": f"pseudo-regret over {family.episodes} pulls (lower is better)",
                "short": "regret", "optimum": "0",
                "heldout": f"{family.heldout_tasks} test-stream tasks",
                "validation": f"{family.validation_tasks} validation tasks (a third key stream)"}
    return {"score": f"return by episode {family.report_episode} (mean of episodes "
                     f"{family.report_episode - 4}-{family.report_episode + 5}; higher is better)",
            "short": f"return by ep {family.report_episode}", "optimum": None,
            "heldout": f"the held-out goals x {family.rollouts_per_task} rollouts",
            "validation": f"the training goals x {family.curve_rollouts} rollouts (no third "
                          f"set exists)"}


def card_text(family: Family, arch: Arch, result: dict, base: dict, commit: str) -> str:
    """The model card of one entry (markdown)."""
    words = score_text(family)
    seeds = range(len(result["heldout"]))
    best = result["best_seed"]
    rows = "\n".join(
        f"| {s} | {result['heldout'][s]['mean']:.2f} ± {result['heldout'][s]['ci']:.2f} | "
        f"{result['validation'][s]['mean']:.2f} ± {result['validation'][s]['ci']:.2f} |"
        + (" default |" if s == best else " |") for s in seeds)
    every = (f", one episode in {family.subsample_every} kept" if family.subsample_every > 1
             else "")
    optimum = words["optimum"] or f"{base['optimum']['mean']:.2f}"
    return f"""# {entry_name(family.name, arch)}

- Architecture: d_model {arch.d_model}, {arch.num_layers} layer(s), {arch.num_heads} head(s),
  MLP {arch.mlp_dim or 'none (attention-only)'}; context {family.context} steps, RoPE;
  {result['num_params']} parameters.
- Source: {family.source} ({family.source_overrides}) on `{family.env}` {family.env_overrides}.
- Data: {family.histories} learning histories (`experiments.collect`, seed 0, training
  tasks{every}); dataset content id `{result['dataset_id'][:16]}`.
- Training: {family.num_steps} steps, batch {family.batch_size} windows of {family.window}
  steps per seed, AdamW lr {family.lr} (warm-up {family.warmup_steps}, cosine), no dropout;
  five seeds in one vmapped call ({result['wall_s']:.0f} s wall on 2 CPU cores).
- Checkpoints: steps {', '.join(map(str, result['steps']))} (final ships; the rest rebuild:
  `python -m ad.zoo.build --family {family.name} --only {arch.name}`).
- Default seed: {best}, the best score on {words['validation']}, never the held-out tasks.
- Score: {words['score']}, sampling at temperature 1, mean ± 95% CI over rollouts.
  Held-out: {words['heldout']}. Source {family.source} learning from scratch on the same
  tasks: {base['source']['mean']:.2f} ± {base['source']['ci']:.2f}; random
  {base['random']['mean']:.2f}; optimum {optimum}.
- Commit: {commit}.

| seed | held-out {words['short']} | validation {words['short']} | |
| --- | --- | --- | --- |
{rows}
"""


def _write_shipped(weights: Path, catalogue: dict, manifest: dict, prints: dict) -> None:
    manifest["environment"] = environment_record()
    weights.mkdir(parents=True, exist_ok=True)
    atomic_write_text(weights / "catalogue.json", json.dumps(catalogue, indent=1))
    atomic_write_text(weights / "manifest.json", json.dumps(manifest, indent=1))
    _save_npz(weights / "fingerprints.npz", prints)


def build(families=None, only=None, out: Path = DEFAULT_OUT, ship: bool = True,
          progress: bool = True, weights: Path = WEIGHTS, catalogue_map=None) -> dict:
    """Build (or resume) the catalogue; returns the catalogue dict. ``weights``: where to
    ship (the package's ``ad/zoo/weights`` by default); ``catalogue_map``: family ->
    architectures (default ``CATALOGUE``; tests pass a small one)."""
    families = families or list(CATALOGUE)
    cat_map = catalogue_map or CATALOGUE
    catalogue = _read_json(weights / "catalogue.json") or {"entries": {}}
    manifest = _read_json(weights / "manifest.json") or {"checkpoints": {}}
    prints = (dict(np.load(weights / "fingerprints.npz"))
              if (weights / "fingerprints.npz").exists() else {})
    prov = provenance()
    commit = prov.get("git_commit", "unknown")
    t_start = time.time()
    datasets, bases = {}, {}
    for fname in families:
        family = FAMILIES[fname]
        datasets[fname] = dataset = open_training_dataset(collect_family(family, out))
        base_path = out / "runs" / fname / "baselines.json"
        if not base_path.exists():
            b = baselines(family, dataset.env, heldout_set(family, dataset.env),
                          jax.random.key(2))
            base_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(base_path, json.dumps({k: Score.of(v)._asdict()
                                                     for k, v in b.items()}))
        bases[fname] = json.loads(base_path.read_text())
    # small to large across families: an interrupted build has the small ones of each
    todo = sorted({(arch, fname) for fname in families for arch in cat_map[fname]
                   if not only or arch.name in only},
                  key=lambda af: (af[0].d_model * af[0].num_layers, af[0], af[1]))
    for arch, fname in todo:
        family, dataset, base = FAMILIES[fname], datasets[fname], bases[fname]
        run = out / "runs" / fname / arch.name
        done = run / "result.json"
        if not done.exists():
            if run.exists():
                shutil.rmtree(run)  # an interrupted configuration restarts whole
            train = train_seeds(family, arch, dataset, run, progress=progress)
            result = evaluate_entry(family, arch, run)
            result.update(train, dataset_id=dataset.content_id)
            atomic_write_text(done, json.dumps(result, indent=1))
        result = json.loads(done.read_text())
        name = entry_name(fname, arch)
        manifest["checkpoints"][name] = checkpoint_hashes(run)
        if ship:
            dest = weights / fname / arch.name
            if dest.exists():
                shutil.rmtree(dest)
            for s in range(NUM_SEEDS):
                src = run / f"seed{s}" / f"step_{family.num_steps:05d}" / "model"
                shutil.copytree(src, dest / f"seed{s}" / "model")
                prints[f"{name}/seed{s}"] = fingerprint(load_model(dest / f"seed{s}"))
            atomic_write_text(dest / "card.md", card_text(family, arch, result, base, commit))
        catalogue["entries"][name] = {
            "family": fname, **dataclasses.asdict(arch), "context": family.context,
            "num_params": result["num_params"], "best_seed": result["best_seed"],
            "seeds": list(range(NUM_SEEDS)), "steps": result["steps"],
            "metric": family.metric, "heldout": result["heldout"],
            "validation": result["validation"], "curve": result["curve"],
            "train_wall_s": result["wall_s"], "dataset_id": result["dataset_id"],
            "commit": commit}
        catalogue.setdefault("families", {})[fname] = {
            **dataclasses.asdict(family), "baselines": base}
        if progress:
            h = result["heldout"][result["best_seed"]]
            print(f"{name}: {result['num_params']} params, held-out "
                  f"{score_text(family)['short']} (seed "
                  f"{result['best_seed']}) {h['mean']:.2f} ± {h['ci']:.2f}; source "
                  f"{base['source']['mean']:.2f}", flush=True)
        if ship:  # after every entry: an interrupted build ships what it finished
            _write_shipped(weights, catalogue, manifest, prints)
    print(f"zoo: {len(catalogue['entries'])} entries; this build {time.time() - t_start:.0f} s")
    return catalogue


def verify(family: str, arch_name: str, out: Path, num_steps: int | None = None) -> list[str]:
    """Rebuild one configuration into ``out`` (up to ``num_steps``, default all) and return
    the checkpoints whose hash differs from the committed manifest (empty: identical)."""
    fam = FAMILIES[family]
    arch = _arch(family, arch_name)
    want = _read_json(WEIGHTS / "manifest.json")["checkpoints"][entry_name(family, arch)]
    dataset = open_training_dataset(collect_family(fam, out))
    run = out / "verify" / family / arch.name
    if run.exists():
        shutil.rmtree(run)
    train_seeds(fam, arch, dataset, run, num_steps=num_steps, progress=False)
    got = checkpoint_hashes(run)
    return [f"seed{s}/{step}" for s, steps in got.items() for step, h in steps.items()
            if want[s].get(step) != h]


def _arch(family: str, name: str) -> Arch:
    for arch in CATALOGUE[family]:
        if arch.name == name:
            return arch
    raise ValueError(f"{family}: no configuration {name!r}; catalogued: "
                     f"{[a.name for a in CATALOGUE[family]]}")


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _save_npz(path: Path, arrays: dict) -> None:
    import io

    from ad.utils import atomic_write_bytes

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ad.zoo.build",
        description="Build the model zoo (ad/zoo): collect each family's histories, train "
                    "five seeds per catalogued configuration in one vmapped call, "
                    "checkpoint at 0, powers of two and the end, evaluate on held-out tasks "
                    "and ship the final weights, catalogue, cards, manifest and fingerprints "
                    "into ad/zoo/weights/. Resumes per configuration.")
    parser.add_argument("--family", nargs="*", choices=sorted(CATALOGUE),
                        help="families to build (default: all)")
    parser.add_argument("--only", nargs="*", help="configuration names, e.g. d8-L1-H2-M0")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"scratch folder for data, runs and checkpoints (default {DEFAULT_OUT})")
    parser.add_argument("--verify", action="store_true",
                        help="rebuild the named configuration(s) and compare every checkpoint's "
                             "hash with ad/zoo/weights/manifest.json (ships nothing)")
    args = parser.parse_args(argv)
    known = {a.name for fam in (args.family or CATALOGUE) for a in CATALOGUE[fam]}
    unknown = sorted(set(args.only or ()) - known)
    if unknown:
        parser.error(f"--only: no configuration {unknown} in {args.family or list(CATALOGUE)}; "
                     f"catalogued: {sorted(known)}")
    if args.verify:
        bad = []
        for fam in args.family or list(CATALOGUE):
            for name in args.only or [a.name for a in CATALOGUE[fam]]:
                diff = verify(fam, name, args.out)
                print(f"{fam}/{name}: {'identical' if not diff else f'{len(diff)} differ: {diff[:5]}'}")
                bad += diff
        return 1 if bad else 0
    build(args.family, args.only, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
