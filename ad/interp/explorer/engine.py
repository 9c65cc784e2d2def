"""The explorer's computations: everything the web page shows, as plain functions of a
model and a stream, built on the toolkit (no second rollout, input builder or edit).

- ``ModelSession``: one loaded model with its env, held-out tasks and the jitted
  functions the page calls. Contexts are padded to a few bucket lengths (``BUCKETS``) so
  an edit that changes the stream's length does not recompile.
- ``policy``: the model's action distribution at every step of a stream (plus the *next*
  step after its end) by the full forward over ``ad.interp.streams.to_inputs`` — what the
  library computes for that stream, optionally with heads / MLPs zero-ablated.
- ``rollout``: closed loop with ``ad.evaluate.ad_rollout`` (from scratch, or continuing
  from a given, possibly edited, stream as its ``prompt``).
- ``edit``: the input edits of ``ad.interp.streams`` by name (flip / delete / set a
  reward, move the goal, drop / duplicate / splice an episode, a drawn trajectory).
- ``inside``: attention rows, logit lens and DLA (``ad.interp.cache``) at one step, with
  ablations or a patch from a second context (``ad.hooks``).
- ``reference_policy``: the source's (UCB1, exact) or a reference agent's (Dark Room:
  the goal-posterior agent) action distribution at every step of the same stream.

Why a window suffices for ``inside``: every layer attends to at most ``c`` steps, so the
logits at step ``t`` depend only on steps ``t - L(c-1) .. t``. The window's inputs are
sliced from the whole stream's inputs (each step keeps its true previous record), so the
window's last row equals the full forward's row ``t`` (up to float rounding of the RoPE
angles at other absolute positions; ``tests/explorer`` checks 1e-5).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ad import evaluate as ev
from ad import hooks
from ad.checkpoints import LoadedModel, load_model
from ad.interp import agents, streams
from ad.interp.cache import run_with_cache
from ad.interp.streams import Stream
from source_agents.history import LearningHistory

PyTree = Any
BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)  # padded stream lengths (steps)
MAX_STEPS = BUCKETS[-1] - 1  # the longest stream the explorer keeps (one step for "next")


def bucket(n: int) -> int:
    """The smallest bucket length >= n."""
    for b in BUCKETS:
        if n <= b:
            return b
    raise ValueError(f"a stream of {n} steps is longer than the explorer's largest bucket "
                     f"({BUCKETS[-1]}); start a new rollout")


# ----------------------------------------------------------------------------------------
# Records exchanged with the web layer
# ----------------------------------------------------------------------------------------
class Ablation(NamedTuple):
    """Which components are zero-ablated: heads (L, H) bool and MLPs (L,) bool."""

    heads: np.ndarray
    mlps: np.ndarray

    @classmethod
    def none(cls, config) -> "Ablation":
        return cls(np.zeros((config.num_layers, config.num_heads), bool),
                   np.zeros((config.num_layers,), bool))

    @classmethod
    def parse(cls, config, heads=(), mlps=()) -> "Ablation":
        """From lists of ``[layer, head]`` pairs and of MLP layers, checked."""
        out = cls.none(config)
        for pair in heads:
            l, h = (int(v) for v in pair)
            if not (0 <= l < config.num_layers and 0 <= h < config.num_heads):
                raise ValueError(f"ablation: head {[l, h]} outside the model's "
                                 f"{config.num_layers} layers x {config.num_heads} heads")
            out.heads[l, h] = True
        for l in mlps:
            if not 0 <= int(l) < config.num_layers:
                raise ValueError(f"ablation: MLP {l} outside the model's {config.num_layers} "
                                 f"layers")
            out.mlps[int(l)] = True
        return out

    @property
    def empty(self) -> bool:
        return not (self.heads.any() or self.mlps.any())

    def interventions(self, config) -> dict[str, hooks.Intervention]:
        """``{hook name: zero ablation}`` for every layer's ``hook_z`` and ``hook_mlp_out``
        (unselected entries pass bit for bit), the same pytree structure whatever is
        selected: one compile serves every ablation."""
        out = {}
        for l in range(config.num_layers):
            out[f"blocks.{l}.attn.hook_z"] = hooks.Intervention(
                where=jnp.asarray(self.heads[l])[None, None, :, None],
                scale=jnp.zeros((), jnp.float32), value=jnp.zeros((), jnp.float32))
            out[f"blocks.{l}.hook_mlp_out"] = hooks.Intervention(
                where=jnp.asarray(self.mlps[l]).reshape(1, 1, 1),
                scale=jnp.zeros((), jnp.float32), value=jnp.zeros((), jnp.float32))
        return out


class Inside(NamedTuple):
    """What the model computes at one step (``ModelSession.inside``)."""

    probs: np.ndarray  # (A,) the action distribution at the step (with the edits applied)
    patterns: np.ndarray  # (L, H, c') attention of the step's predicting token over the
    #   c' = min(c, t + 1) steps it can see (summed over a step's tokens), oldest first
    window_start: int  # the stream step of the window's first column
    lens: np.ndarray  # (L + 1, A) logit lens: logits read before each layer and at the end
    lens_labels: list
    dla: np.ndarray  # (C, A) direct logit attribution of each component to each action's
    #   logit (columns sum to the logits, bias included)
    dla_labels: list


# ----------------------------------------------------------------------------------------
# Model discovery
# ----------------------------------------------------------------------------------------
class ModelEntry(NamedTuple):
    id: str  # the run directory, as given or found
    env: str
    source: str
    label: str


def discover(*roots: str | Path) -> list[ModelEntry]:
    """Every finished model (``<run>/model/config.json``) under the given folders (a
    folder that is itself a run counts), then the model zoo's catalogue (``ad.zoo.list()``):
    one entry per configuration, its default (best-on-validation) seed, shipped as package
    data so it opens offline."""
    found = _runs(roots)
    seen = {e.id for e in found}
    from ad import zoo

    for item in zoo.list():
        run = item.path / f"seed{item.best_seed}"
        if str(run) not in seen:
            found += [e._replace(label=f"zoo/{item.name}") for e in _runs([run])]
    return found


def _runs(roots) -> list[ModelEntry]:
    """The finished runs under the folders, in path order, each once."""
    import json

    found, seen = [], set()
    for root in roots:
        root = Path(root)
        if not root.exists():
            continue
        configs = ([root / "model" / "config.json"] if (root / "model" / "config.json").exists()
                   else sorted(root.glob("**/model/config.json")))
        for cfg in configs:
            run = cfg.parent.parent
            if str(run) in seen:
                continue
            try:
                meta = json.loads(cfg.read_text())
            except (OSError, ValueError):
                continue  # a run being written; load_model would name the problem
            seen.add(str(run))
            label = f"{run.parent.name}/{run.name}" if run.parent.name else run.name
            found.append(ModelEntry(str(run), str(meta.get("env", "?")),
                                    str(meta.get("source", "")), label))
    return found


def load_any(model_id: str) -> LoadedModel:
    """A run directory (the runs folders' and the zoo's alike), loaded and checked."""
    return load_model(model_id)


# ----------------------------------------------------------------------------------------
# The session of one model
# ----------------------------------------------------------------------------------------
def _is_darkroom(env) -> bool:
    from envs.darkroom import DarkRoom

    return isinstance(env, DarkRoom)


def _is_bandit(env) -> bool:
    from envs.bandits import BernoulliBandit

    return isinstance(env, BernoulliBandit)


def stream_to_json(stream: Stream) -> dict:
    """Row 0 of a stream as JSON lists."""
    return {"obs": np.asarray(stream.obs)[0].tolist(),
            "action": np.asarray(stream.action)[0].tolist(),
            "reward": np.asarray(stream.reward)[0].astype(float).tolist(),
            "done": np.asarray(stream.done)[0].astype(bool).tolist()}


def stream_from_json(d: dict, config) -> Stream:
    """A one-row stream from the page's JSON, checked against the model's spaces."""
    try:
        obs = np.asarray(d["obs"], np.int32)
        action = np.asarray(d["action"], np.int32)
        reward = np.asarray(d["reward"], np.float32)
        done = np.asarray(d["done"], bool)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"stream: needs obs, action, reward, done lists ({e})") from e
    T = action.shape[0] if action.ndim == 1 else -1
    if T < 1 or reward.shape != (T,) or done.shape != (T,) or obs.shape != (T, *config.obs_shape):
        raise ValueError(f"stream: shapes obs {obs.shape}, action {action.shape}, reward "
                         f"{reward.shape}, done {done.shape} do not make one stream of "
                         f"observations {tuple(config.obs_shape)}")
    if T > MAX_STEPS:
        raise ValueError(f"stream: {T} steps, the explorer keeps at most {MAX_STEPS}")
    if action.min() < 0 or action.max() >= config.num_actions:
        raise ValueError(f"stream: actions must lie in [0, {config.num_actions})")
    return Stream(obs=obs[None], action=action[None], reward=reward[None], done=done[None])


@dataclasses.dataclass
class ModelSession:
    """A loaded model and the jitted functions the explorer calls on it."""

    model: LoadedModel
    model_id: str

    def __post_init__(self):
        if self.model.config.obs_encoder == "minigrid":
            raise ValueError(f"{self.model_id}: the explorer handles array observations (the "
                             f"Dark Room family, Key-to-Door, bandits); MiniGrid models are "
                             f"not supported yet")
        self.config = self.model.config
        self.env = self.model.env
        self.lock = threading.Lock()  # JAX calls from the server's threads, one at a time
        cfg = self.config
        # the steps whose inputs can reach a step's logits, and the window used for inside
        self.reach = cfg.num_layers * (cfg.context - 1) + 1
        self.window = bucket(self.reach)
        self._policy_fn = jax.jit(self._policy_impl)
        self._inside_fn = jax.jit(self._inside_impl, static_argnames=("patch",))
        self._source_cache: dict = {}

    # ---- tasks ---------------------------------------------------------------------------
    @functools.cached_property
    def tasks(self) -> PyTree:
        """The held-out tasks shown in the page: every Dark Room test goal; 16 sampled
        held-out bandits (fixed key)."""
        return ev.eval_tasks(self.env, "test", 16, jax.random.PRNGKey(0))

    def num_tasks(self) -> int:
        return int(jax.tree.leaves(self.tasks)[0].shape[0])

    def task(self, i: int) -> PyTree:
        if not 0 <= i < self.num_tasks():
            raise ValueError(f"task {i} does not exist (0..{self.num_tasks() - 1})")
        return jax.tree.map(lambda x: x[i:i + 1], self.tasks)

    def describe_task(self, i: int) -> dict:
        task = jax.tree.map(lambda x: np.asarray(x)[0], self.task(i))
        out = {"index": i, "optimum": float(self.env.optimal_return(task))}
        if _is_darkroom(self.env):
            out["goal"] = np.asarray(task.goal).tolist()
        elif _is_bandit(self.env):
            out["means"] = np.asarray(task.means).astype(float).tolist()
        return out

    def info(self) -> dict:
        cfg = self.config
        kind = "darkroom" if _is_darkroom(self.env) else "bandit" if _is_bandit(self.env) else "other"
        info = {"id": self.model_id, "env": self.model.env_name, "kind": kind,
                "num_actions": cfg.num_actions, "num_layers": cfg.num_layers,
                "num_heads": cfg.num_heads, "context": cfg.context, "reach": self.reach,
                "episode_steps": int(self.env.max_episode_steps),
                "tasks": [self.describe_task(i) for i in range(self.num_tasks())],
                "features": None}  # SAE features: a later issue (module docstring of app)
        if kind == "darkroom":
            info["size"] = int(self.env.size)
            info["start"] = [int(self.env.size // 2)] * 2
        return info

    # ---- the model's policy on a stream ----------------------------------------------------
    def _policy_impl(self, params, inputs, heads, mlps):
        ablation = Ablation(heads, mlps).interventions(self.config)
        logits = hooks.run_with_hooks(params, self.config, inputs, ablation)
        return jax.nn.softmax(logits[0], axis=-1)

    def with_query(self, stream: Stream) -> Stream:
        """The stream plus one *query* step: the observation the agent would see next
        (the env's start after an episode end; Dark Room: the move's cell), action 0 (never
        read by its own logits: the model is causal)."""
        obs = np.asarray(stream.obs)
        last, done = obs[0, -1], bool(np.asarray(stream.done)[0, -1])
        if done or not _is_darkroom(self.env):
            nxt, _ = self.env.reset(jax.random.PRNGKey(0), jax.tree.map(lambda x: x[0],
                                                                        self.task(0)))
            nxt = np.asarray(nxt, np.int32)
            if not done:  # a bandit stream is always at an episode end; other envs: keep
                nxt = last
        else:
            from envs.darkroom import MOVES

            nxt = np.clip(last + MOVES[int(np.asarray(stream.action)[0, -1])], 0,
                          self.env.size - 1).astype(np.int32)
        return Stream(obs=np.concatenate([obs, nxt[None, None]], 1),
                      action=np.concatenate([np.asarray(stream.action), [[0]]], 1).astype(np.int32),
                      reward=np.concatenate([np.asarray(stream.reward), [[0.0]]], 1).astype(np.float32),
                      done=np.concatenate([np.asarray(stream.done), [[False]]], 1))

    def inputs(self, stream: Stream, length: int | None = None):
        """The model's inputs for the stream, right-padded to ``length`` steps (padding
        never changes the real steps' logits: the model is causal)."""
        T = np.asarray(stream.action).shape[1]
        padded = _pad(stream, (length or T) - T)
        return streams.to_inputs(padded, self.config)

    def policy(self, stream: Stream, ablation: Ablation | None = None) -> np.ndarray:
        """(T + 1, A) float32: the model's action distribution at every step of the stream
        and at the query step after it (``with_query``)."""
        ablation = ablation or Ablation.none(self.config)
        q = self.with_query(stream)
        T = q.action.shape[1]
        with self.lock:
            probs = self._policy_fn(self.model.params, self.inputs(q, bucket(T)),
                                    jnp.asarray(ablation.heads), jnp.asarray(ablation.mlps))
            return np.asarray(probs)[:T]

    # ---- closed loop -------------------------------------------------------------------------
    def rollout(self, task: int, episodes: int, seed: int = 0, prompt: Stream | None = None,
                ablation: Ablation | None = None) -> Stream:
        """``episodes`` more episodes in closed loop (``ad.evaluate.ad_rollout``) on task
        ``task``, from scratch or continuing ``prompt`` (which must end an episode).

        Only the prompt's last ``reach`` steps are fed: no later step can see further back
        (module docstring), so the continuation is the same, and the prompt's length takes
        few values (one compile each). Ablations apply to the new steps' computations only
        (``ad_rollout`` feeds a prompt unablated): the first ``reach - 1`` new steps still
        read keys and values the prompt's steps wrote without the ablation."""
        if not 1 <= episodes <= 1000:
            raise ValueError(f"episodes must lie in [1, 1000], got {episodes}")
        cfg = self.config
        num_steps = episodes * int(self.env.max_episode_steps)
        hist = None
        if prompt is not None:
            if not bool(np.asarray(prompt.done)[0, -1]):
                raise ValueError("continue: the context must end with a finished episode")
            keep = slice(max(0, prompt.action.shape[1] - self.reach), None)
            done = np.asarray(prompt.done)[:, keep]
            hist = LearningHistory(obs=jnp.asarray(np.asarray(prompt.obs)[:, keep]),
                                   action=jnp.asarray(np.asarray(prompt.action)[:, keep]),
                                   reward=jnp.asarray(np.asarray(prompt.reward)[:, keep]),
                                   terminated=jnp.zeros(done.shape, bool),
                                   truncated=jnp.asarray(done))
        ablation = ablation or Ablation.none(cfg)
        key = jax.random.fold_in(jax.random.PRNGKey(seed),
                                 0 if prompt is None else prompt.action.shape[1])
        with self.lock:
            r = ev.ad_rollout(self.model.params, cfg, self.env, self.task(task), key,
                              num_steps, prompt=hist, record_policy=True,
                              hooks=ablation.interventions(cfg))
            new = Stream.from_rollout(r)
        if prompt is None:
            return new
        return Stream(obs=np.concatenate([np.asarray(prompt.obs), new.obs], 1),
                      action=np.concatenate([np.asarray(prompt.action), new.action], 1),
                      reward=np.concatenate([np.asarray(prompt.reward), new.reward], 1),
                      done=np.concatenate([np.asarray(prompt.done), new.done], 1))

    def random_episode(self, task: int, seed: int = 0) -> Stream:
        """One episode of the uniformly random policy on the task."""
        with self.lock:
            r = ev.random_rollout(self.env, self.task(task), jax.random.PRNGKey(seed),
                                  int(self.env.max_episode_steps))
        return self._policy_stream(task, r)

    def _policy_stream(self, task, r) -> Stream:
        # policy_rollout does not record observations: replay the actions (Dark Room's
        # dynamics are deterministic) to recover them
        obs = self.replay_obs(task, np.asarray(r.action)[0])
        return Stream(obs=obs[None], action=np.asarray(r.action).astype(np.int32),
                      reward=np.asarray(r.reward).astype(np.float32),
                      done=np.asarray(r.done).astype(bool))

    def replay_obs(self, task: int, actions: np.ndarray) -> np.ndarray:
        """(S, *obs) the observations seen before each action of one episode, from the
        env's start (Dark Room: its move rule on the host; others: the env's own steps)."""
        if _is_darkroom(self.env):
            from envs.darkroom import MOVES

            obs = np.zeros((len(actions), 2), np.int32)
            obs[0] = self.env.size // 2
            for t in range(1, len(actions)):
                obs[t] = np.clip(obs[t - 1] + MOVES[actions[t - 1]], 0, self.env.size - 1)
            return obs
        params = jax.tree.map(lambda x: x[0], self.task(task))
        obs, state = self.env.reset(jax.random.PRNGKey(0), params)
        out = []
        for a in actions:
            out.append(np.asarray(obs))
            obs, state, *_ = self.env.step(jax.random.PRNGKey(0), state, jnp.int32(a), params)
        return np.asarray(out, np.int32)

    def source_stream(self, task: int, seed: int = 0) -> Stream:
        """The source algorithm learning the task from scratch (cached per task)."""
        key = (task, seed)
        if key not in self._source_cache:
            import source_agents

            source = source_agents.get(self._source_name())
            src_cfg = source_agents.make_config(source, self.model.env_name)
            with self.lock:
                hist, _ = ev.source_learning(source, src_cfg, self.env, self.task(task),
                                             jax.random.PRNGKey(seed))
            self._source_cache[key] = Stream.from_history(hist)
        return self._source_cache[key]

    def _source_name(self) -> str:
        import json

        meta = json.loads((Path(self.model.run_dir) / "model" / "config.json").read_text())
        if not meta.get("source"):
            raise ValueError(f"{self.model_id}: the model's config names no source")
        return meta["source"]

    # ---- edits -----------------------------------------------------------------------------
    def edit(self, stream: Stream, op: str, task: int, **args) -> Stream:
        """``stream`` with one edit (``ad.interp.streams``) applied; length may change."""
        T = stream.action.shape[1]

        def step_arg(name="t"):
            t = int(args[name])
            if not 0 <= t < T:
                raise ValueError(f"{op}: step {t} outside the stream (0..{T - 1})")
            return t

        def episode_arg(name="episode"):
            k = int(args[name])
            n = int(streams.episode_index(stream)[0, -1]) + 1
            if not 0 <= k < n:
                raise ValueError(f"{op}: episode {k} does not exist (0..{n - 1})")
            return k

        if op == "flip_reward":
            t = step_arg()
            return streams.set_reward(stream, 0, t, 1.0 - float(stream.reward[0, t]))
        if op == "delete_reward":
            return streams.set_reward(stream, 0, step_arg(), 0.0)
        if op == "set_reward":
            return streams.set_reward(stream, 0, step_arg(), float(args["value"]))
        if op == "move_goal":
            return streams.move_goal(stream, np.asarray(args["goal"], np.int32), self.env)
        if op == "drop_episode":
            padded = streams.drop_episode(stream, episode_arg())
            return _valid_part(padded)
        if op == "duplicate_episode":
            k = episode_arg()
            n = int((streams.episode_index(stream)[0] == k).sum())
            if T + n > MAX_STEPS:
                raise ValueError(f"{op}: the stream would exceed {MAX_STEPS} steps")
            # room for the copy first: duplicate_episode cuts rows at their length
            return streams.duplicate_episode(_pad(stream, n), k)
        if op in ("splice_source", "splice_random", "splice_drawn"):
            k = episode_arg()
            if op == "splice_random":
                donor, j = self.random_episode(task, int(args.get("seed", 0))), 0
            elif op == "splice_drawn":
                donor, j = self.drawn_episode(task, args["cells"]), 0
            else:
                donor = self.source_stream(task)
                n_src = int(streams.episode_index(donor)[0, -1])
                j = min(int(args.get("source_episode", 0)), n_src)
            # the spliced episode may be longer than the one it replaces: right-pad first
            # (splice_episode cuts rows at their length), then keep the real steps
            n_k = int((streams.episode_index(stream)[0] == k).sum())
            n_j = int((streams.episode_index(donor)[0] == j).sum())
            padded = streams.splice_episode(_pad(stream, max(0, n_j - n_k)), k, donor, j)
            return _first(padded.stream, T - n_k + n_j)
        raise ValueError(f"unknown edit {op!r}; edits: flip_reward, delete_reward, set_reward, "
                         f"move_goal, drop_episode, duplicate_episode, splice_source, "
                         f"splice_random, splice_drawn")

    def drawn_episode(self, task: int, cells) -> Stream:
        """A Dark Room episode along the clicked cells (each adjacent to the one before,
        the first adjacent to or at the start), then the no-op until the horizon; rewards
        by the env's rule for the task's goal (``streams.move_goal``)."""
        from envs.darkroom import MOVES

        if not _is_darkroom(self.env):
            raise ValueError("draw: trajectories are drawn on Dark Room grids only")
        cells = [np.asarray(c, np.int32) for c in cells]
        pos = np.full(2, self.env.size // 2, np.int32)
        H = int(self.env.horizon)
        if len(cells) > H:
            raise ValueError(f"draw: {len(cells)} moves, an episode has {H}")
        actions = []
        for c in cells:
            diff = c - pos
            match = np.flatnonzero(np.all(MOVES == diff, axis=1))
            if match.size == 0 or c.min() < 0 or c.max() >= self.env.size:
                raise ValueError(f"draw: cell {c.tolist()} is not adjacent to {pos.tolist()}")
            actions.append(int(match[0]))
            pos = c
        actions += [0] * (H - len(actions))
        obs = self.replay_obs(task, np.asarray(actions))
        done = np.zeros(H, bool)
        done[-1] = True
        s = Stream(obs=obs[None], action=np.asarray([actions], np.int32),
                   reward=np.zeros((1, H), np.float32), done=done[None])
        goal = np.asarray(jax.tree.map(lambda x: x[0], self.task(task)).goal)
        return streams.move_goal(s, goal, self.env)

    # ---- inside ------------------------------------------------------------------------------
    def _inside_impl(self, params, inputs, donor, heads, mlps, q, *, patch: bool):
        cfg = self.config
        K = cfg.tokens_per_step
        if patch:  # the selected components at step q take the donor context's values
            names = [f"blocks.{l}.attn.hook_z" for l in range(cfg.num_layers)] + \
                    [f"blocks.{l}.hook_mlp_out" for l in range(cfg.num_layers)]
            _, d_acts = hooks.run_with_hooks(params, cfg, donor, capture=names)
            N = inputs.prev_action.shape[1] * K
            at_q = (jnp.arange(N) // K == q)
            edits = {}
            for l in range(cfg.num_layers):
                edits[f"blocks.{l}.attn.hook_z"] = hooks.Intervention(
                    where=(at_q[None, :, None, None] & heads[l][None, None, :, None]),
                    scale=jnp.zeros((), jnp.float32),
                    value=d_acts[f"blocks.{l}.attn.hook_z"])
                edits[f"blocks.{l}.hook_mlp_out"] = hooks.Intervention(
                    where=(at_q[None, :, None] & mlps[l]), scale=jnp.zeros((), jnp.float32),
                    value=d_acts[f"blocks.{l}.hook_mlp_out"])
        else:
            edits = Ablation(heads, mlps).interventions(cfg)
        names = [f"blocks.{l}.attn.hook_pattern" for l in range(cfg.num_layers)]
        logits, cache = run_with_cache(
            params, cfg, inputs, hooks_=edits,
            names_filter=lambda n: n in names or hooks.local_name(n) != "attn.hook_result")
        W = inputs.prev_action.shape[1]
        rows = jnp.stack([cache[n][0, :, q * K + K - 1] for n in names])  # (L, H, N)
        patterns = rows.reshape(cfg.num_layers, cfg.num_heads, W, K).sum(-1)
        lens, _ = cache.logit_lens()
        dla = jnp.stack([cache.dla(a)[0][:, 0, q] for a in range(cfg.num_actions)], -1)
        return jax.nn.softmax(logits[0, q]), patterns, lens[:, 0, q], dla

    def inside(self, stream: Stream, t: int, ablation: Ablation | None = None,
               donor: Stream | None = None) -> Inside:
        """Attention, logit lens and DLA at step ``t`` (``T`` = the query step) of the
        stream, with components zero-ablated, or — given a ``donor`` stream — the selected
        components at step ``t`` patched from the donor's step ``t``."""
        cfg = self.config
        ablation = ablation or Ablation.none(cfg)
        q_stream = self.with_query(stream)
        T = q_stream.action.shape[1]
        if not 0 <= t < T:
            raise ValueError(f"inside: step {t} outside the stream (0..{T - 1})")
        W = self.window
        start = max(0, t + 1 - W)
        full = self.inputs(q_stream, bucket(T))
        win = jax.tree.map(lambda x: np.asarray(x)[:, start:start + W], full)
        win = jax.tree.map(lambda x: _pad_axis1(x, W), win)
        q = t - start
        d_win = win
        if donor is not None:
            dq = self.with_query(donor)
            if dq.action.shape[1] <= t:
                raise ValueError(f"patch: the second context has {dq.action.shape[1]} steps, "
                                 f"none at step {t}")
            d_full = self.inputs(dq, bucket(dq.action.shape[1]))
            d_win = jax.tree.map(lambda x: _pad_axis1(np.asarray(x)[:, start:start + W], W),
                                 d_full)
        with self.lock:
            probs, patterns, lens, dla = self._inside_fn(
                self.model.params, win, d_win, jnp.asarray(ablation.heads),
                jnp.asarray(ablation.mlps), jnp.int32(q), patch=donor is not None)
            probs, patterns, lens, dla = (np.asarray(x) for x in (probs, patterns, lens, dla))
        L = cfg.num_layers
        lens_labels = [f"before L{l}" for l in range(L)] + ["final"]
        dla_labels = _dla_labels(cfg)
        n_cols = min(cfg.context, t + 1)  # the band: all a step's query can attend to
        return Inside(probs, patterns[:, :, q + 1 - n_cols:q + 1], t + 1 - n_cols, lens,
                      lens_labels, dla, dla_labels)

    # ---- reference agents ----------------------------------------------------------------------
    def reference_policy(self, stream: Stream) -> tuple[np.ndarray, str]:
        """(T + 1, A) the reference agent's action distribution at each step of the stream
        and the query step, and its name: UCB1 (the bandit models' source, exact) or the
        Dark Room goal-posterior agent (``darkroom_reference``)."""
        q = self.with_query(stream)
        if _is_bandit(self.env):
            return ucb1_policy(q, self.config.num_actions), "UCB1 (the source, exact)"
        if _is_darkroom(self.env):
            return darkroom_reference(q, self.env.size), "goal-posterior agent"
        raise ValueError(f"no reference agent for env {self.model.env_name!r}")


def _dla_labels(cfg) -> list[str]:
    """The labels ``ActivationCache.dla(heads=True)`` gives, without running it."""
    labels = ["embed.obs"] + (["embed.episode_start"] if cfg.episode_start_token else [])
    if cfg.token_layout == "step":
        labels += ["embed.action", "embed.reward"] + (["embed.prev_obs"] if cfg.prev_obs_token else [])
    for l in range(cfg.num_layers):
        labels += [f"L{l}H{h}" for h in range(cfg.num_heads)] + [f"L{l}.b_O", f"L{l}.mlp"]
    return labels + ["bias"]


def _pad_axis1(x: np.ndarray, length: int) -> np.ndarray:
    x = np.asarray(x)
    pad = [(0, 0)] * x.ndim
    pad[1] = (0, length - x.shape[1])
    return np.pad(x, pad)


def _pad(stream: Stream, n: int) -> Stream:
    """``n`` empty steps at the end (zero obs, action 0, reward 0, not done)."""
    return Stream(obs=_pad_axis1(stream.obs, stream.action.shape[1] + n),
                  action=_pad_axis1(stream.action, stream.action.shape[1] + n),
                  reward=_pad_axis1(stream.reward, stream.action.shape[1] + n),
                  done=_pad_axis1(stream.done, stream.action.shape[1] + n))


def _first(s: Stream, n: int) -> Stream:
    """The first ``n`` steps of a stream."""
    return Stream(obs=np.asarray(s.obs)[:, :n], action=np.asarray(s.action)[:, :n],
                  reward=np.asarray(s.reward)[:, :n], done=np.asarray(s.done)[:, :n])


def _valid_part(p: streams.Padded) -> Stream:
    """The real steps of a one-row ``Padded`` result."""
    return _first(p.stream, int(np.asarray(p.valid)[0].sum()))


# ----------------------------------------------------------------------------------------
# Reference agents
# ----------------------------------------------------------------------------------------
def ucb1_policy(stream: Stream, num_arms: int, c: float = 1.0) -> np.ndarray:
    """(T, A) UCB1's choice at every step given the stream's earlier pulls and rewards, as
    a one-hot distribution (lowest index on ties, as the source's argmax)."""
    return agents.policy_along(agents.UCB1(num_arms, c), *_fields(stream), ties="first")[0]


def darkroom_reference(stream: Stream, size: int) -> np.ndarray:
    """(T, 5) the Dark Room goal-posterior agent (``ad.interp.agents.GoalPosterior``, the
    study's) at each step of the stream: a shortest path to the goal once a move has paid,
    else to the nearest cells no move has ended on without pay; equivalent moves (ties)
    share the probability."""
    return agents.policy_along(agents.GoalPosterior(size), *_fields(stream), ties="share")[0]


def _fields(stream: Stream):
    return (np.asarray(stream.obs), np.asarray(stream.action), np.asarray(stream.reward),
            np.asarray(stream.done))


def episode_returns(stream: Stream) -> list[float]:
    """The return of every finished episode of row 0."""
    ep = streams.episode_index(stream)[0]
    done = np.asarray(stream.done)[0]
    reward = np.asarray(stream.reward)[0]
    n = int(done.sum())
    return [float(reward[ep == e].sum()) for e in range(n)]
