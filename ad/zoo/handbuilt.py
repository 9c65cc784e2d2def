"""Hand-built AD transformers: weights written by hand to implement known bandit algorithms.

Ground truth for the interpretability toolkit: the same ``ADTransformer`` class (every hook
and tool applies unchanged), one attention-only layer, ``positions="none"``, the band
covering the whole 100-pull stream. The algorithms (``algorithm_values`` computes them in
NumPy, independently of the weights):

- ``greedy``: act greedily on per-arm empirical means ``m_a = s_a / n_a``; unpulled arms
  are optimistic (valued above every pulled arm, so each arm is tried once first).
- ``bonus``: greedy on ``m_a + bonus / (n_a + 1)``, an exploration bonus shrinking with
  pulls (unpulled arms still first).

The mechanism (what the weights put where; ``Layout`` names the residual dimensions):

- Token ``t`` holds the previous pull ``a_{t-1}``, ``r_{t-1}``: the residual is the
  one-hot of the action ("none" at the stream start) plus ``r`` in a reward dimension and
  ``1 - r`` in a balancing one, so every token has the same mean and variance and ln1 is
  one fixed affine map (exact for Bernoulli rewards, r in {0, 1}).
- Head ``a`` (a "mean head", a < A): a constant query (bias only) against keys that are
  the indicator ``[a_j = a]``, scaled so a matching token scores ``SCORE`` higher
  (softmax weight of every other token: ``exp(-SCORE)`` = 0 in float32). It attends
  uniformly to the tokens of arm ``a``'s pulls and reads their reward: ``z = (m_a, 1)``;
  with no pull of arm ``a`` in the band it attends uniformly to every token and
  ``z = (mean reward of the stream, 0)``, the same for every unpulled arm.
- Head ``A + a`` (a "count head", bonus models): keys ``[a_j = a] + [a_j = none]``; the
  stream-start token is always in the band, so its weight is ``1 / (n_a + 1)``, read as
  ``z = 1 / (n_a + 1)``.
- The output projection writes ``value_a = m_a + OPTIMISM * (1 - pulled_a) +
  bonus / (n_a + 1)`` into a readout dimension ``u_a`` no token embedding touches; the
  final LayerNorm subtracts one mean and divides by one scale per token (common to every
  arm), and the head reads ``u_a`` into logit ``a`` with gain ``GAIN``, so the argmax of
  the logits is the algorithm's and sampling at temperature 1 is (nearly) greedy.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ad.config import ModelConfig
from ad.model import init_params

PyTree = Any
ALGORITHMS = ("greedy", "bonus")
SCORE = 1e4  # attention-score gap between the tokens a head reads and the others
OPTIMISM = 3.0  # added to unpulled arms' values: above every pulled arm's (<= 1 + bonus)
GAIN = 1e3  # logit per unit of value (after the final LayerNorm's per-token scale)
DEFAULT_BONUS = 0.5 ** 0.5  # irrational: values of different arms tie only if n and s do
LN_EPS = 1e-5  # the model's LayerNorm epsilon (ad.model)


class Layout(NamedTuple):
    """Where the weights put things: residual dimensions and heads."""

    num_arms: int
    d_model: int
    head_dim: int
    action: list  # residual dim of each action's one-hot (arms, then "none")
    reward: int  # residual dim holding r
    balance: int  # residual dim holding 1 - r (keeps every token's mean and norm equal)
    readout: list  # residual dim u_a holding arm a's value (read by logit a)
    mean_heads: list  # head a computes (m_a, pulled_a)
    count_heads: list  # head A + a computes 1 / (n_a + 1) (bonus models; [] otherwise)


def layout(num_arms: int, algorithm: str) -> Layout:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if num_arms < 2:
        raise ValueError(f"num_arms must be >= 2, got {num_arms}")
    A = num_arms
    heads = A if algorithm == "greedy" else 2 * A
    needed = (A + 1) + 2 + A  # actions incl. none, reward + balance, readouts
    head_dim = max(2, -(-needed // heads))  # a mean head's value needs 2 components
    d = heads * head_dim
    return Layout(A, d, head_dim, list(range(A + 1)), A + 1, A + 2,
                  list(range(A + 3, 2 * A + 3)), list(range(A)),
                  list(range(A, 2 * A)) if algorithm == "bonus" else [])


def model_config(num_arms: int, algorithm: str = "greedy", context: int = 100) -> ModelConfig:
    lay = layout(num_arms, algorithm)
    return ModelConfig(num_actions=num_arms, obs_shape=(1,), obs_num_values=1,
                       obs_encoder="discrete", context=context, d_model=lay.d_model,
                       num_layers=1, num_heads=len(lay.mean_heads) + len(lay.count_heads),
                       mlp_dim=0, dropout=0.0, positions="none", attention_impl="dense")


def build(num_arms: int, algorithm: str = "greedy", bonus: float = DEFAULT_BONUS,
          context: int = 100) -> tuple[ModelConfig, PyTree]:
    """``(config, params)`` of the hand-built model (module docstring)."""
    cfg = model_config(num_arms, algorithm, context)
    lay = layout(num_arms, algorithm)
    A, d, Dh, H = num_arms, lay.d_model, lay.head_dim, cfg.num_heads
    template = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))  # shapes only
    params = jax.tree.map(lambda x: np.zeros(x.shape, np.float32), template)

    # ---- embeddings: x = onehot(action) + r e_reward + (1 - r) e_balance --------------
    for a in range(A + 1):
        params["action_embed"][a, lay.action[a]] = 1.0
    params["reward_embed"]["kernel"][0, lay.reward] = 1.0
    params["reward_embed"]["kernel"][0, lay.balance] = -1.0
    params["reward_embed"]["bias"][lay.balance] = 1.0

    # ---- ln1 is the fixed map h = (x - m) / s: every token sums to 2 with squares 2 ----
    m = 2.0 / d
    s = np.sqrt(2.0 / d - m * m + LN_EPS)
    blk = params["blocks_0"]
    blk["ln1"]["scale"][:] = 1.0
    blk["ln2"]["scale"][:] = 1.0  # unused (attention-only), kept at LayerNorm's default

    def linear_of_x(M: np.ndarray, c: np.ndarray):
        """kernel (d, out) and bias (out,) of ``y = M x + c`` computed from h = ln1(x)."""
        return s * M.T, c + m * M.sum(axis=1)

    Mq, cq = np.zeros((d, d)), np.zeros(d)
    Mk, Mv = np.zeros((d, d)), np.zeros((d, d))
    col = lambda head, comp: head * Dh + comp  # noqa: E731  (q/k/v column of a head)
    for a in range(A):
        h = lay.mean_heads[a]
        cq[col(h, 0)] = SCORE * np.sqrt(Dh)  # the model scales scores by 1/sqrt(Dh)
        Mk[col(h, 0), lay.action[a]] = 1.0
        Mv[col(h, 0), lay.reward] = 1.0  # z0 = mean reward of the tokens read
        Mv[col(h, 1), lay.action[a]] = 1.0  # z1 = share of them that are arm a's
        if lay.count_heads:
            h = lay.count_heads[a]
            cq[col(h, 0)] = SCORE * np.sqrt(Dh)
            Mk[col(h, 0), lay.action[a]] = 1.0
            Mk[col(h, 0), lay.action[A]] = 1.0  # the stream start: the pseudo-count
            Mv[col(h, 0), lay.action[A]] = 1.0  # z0 = 1 / (n_a + 1)
    kq, bq = linear_of_x(Mq, cq)
    kk, bk = linear_of_x(Mk, np.zeros(d))
    kv, bv = linear_of_x(Mv, np.zeros(d))
    blk["qkv"]["kernel"][:] = np.concatenate([kq, kk, kv], axis=1)
    blk["qkv"]["bias"][:] = np.concatenate([bq, bk, bv])

    # ---- output: u_a = m_a + OPTIMISM (1 - pulled_a) + bonus / (n_a + 1) --------------
    W = blk["attn_out"]["kernel"]  # (H * Dh, d)
    for a in range(A):
        u = lay.readout[a]
        W[col(lay.mean_heads[a], 0), u] = 1.0
        W[col(lay.mean_heads[a], 1), u] = -OPTIMISM
        blk["attn_out"]["bias"][u] = OPTIMISM
        if lay.count_heads:
            W[col(lay.count_heads[a], 0), u] = bonus

    # ---- readout: logit a = GAIN * (u_a - mean) / scale --------------------------------
    params["ln_final"]["scale"][:] = 1.0
    for a in range(A):
        params["head"]["kernel"][lay.readout[a], a] = GAIN
    assert H * Dh == d
    return cfg, jax.tree.map(jnp.asarray, params)


# ----------------------------------------------------------------------------------------
# The algorithms, in NumPy (independent of the weights)
# ----------------------------------------------------------------------------------------
def algorithm_values(prev_action: np.ndarray, prev_reward: np.ndarray, num_arms: int,
                     algorithm: str = "greedy", bonus: float = DEFAULT_BONUS) -> np.ndarray:
    """(B, T, A) float64 values the algorithm maximises at each step; unpulled arms +inf.

    Step ``t`` knows the pulls recorded in tokens ``1..t`` (``prev_action[:, j]`` is the
    pull of step ``j - 1``; the "none" action ``num_arms`` counts for no arm).
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    a = np.asarray(prev_action)
    r = np.asarray(prev_reward, np.float64)
    onehot = (a[..., None] == np.arange(num_arms)).astype(np.float64)  # (B, T, A)
    n = np.cumsum(onehot, axis=1)
    s = np.cumsum(onehot * r[..., None], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = s / n
    if algorithm == "bonus":
        value = value + bonus / (n + 1.0)
    return np.where(n > 0, value, np.inf)


def best_sets(values: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """(..., A) bool: the actions within ``tol`` of the best value (every +inf if any)."""
    top = values.max(-1, keepdims=True)
    finite_top = np.isfinite(top)
    return np.where(finite_top, values >= top - tol, np.isinf(values))


def algorithm_rollout(means: np.ndarray, pulls: int, rng: np.random.Generator,
                      algorithm: str = "greedy", bonus: float = DEFAULT_BONUS) -> np.ndarray:
    """(N, pulls) actions of the algorithm on tasks ``means`` (N, A), ties broken uniformly
    at random (the NumPy reference the closed-loop regret is compared with)."""
    N, A = means.shape
    n = np.zeros((N, A))
    s = np.zeros((N, A))
    actions = np.zeros((N, pulls), np.int64)
    for t in range(pulls):
        with np.errstate(invalid="ignore", divide="ignore"):
            v = s / n + (bonus / (n + 1.0) if algorithm == "bonus" else 0.0)
        v = np.where(n > 0, v, np.inf)
        best = best_sets(v)
        noise = rng.random((N, A))
        act = np.argmax(np.where(best, noise, -1.0), axis=-1)
        reward = (rng.random(N) < means[np.arange(N), act]).astype(np.float64)
        n[np.arange(N), act] += 1
        s[np.arange(N), act] += reward
        actions[:, t] = act
    return actions


# ----------------------------------------------------------------------------------------
# Catalogue entries (shipped like the trained ones)
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class HandBuilt:
    family: str  # zoo family name, e.g. "bandit5-greedy"
    num_arms: int
    algorithm: str


HANDBUILT = tuple(HandBuilt(f"bandit{k}-{alg}", k, alg) for k in (2, 5) for alg in ALGORITHMS)


def ship(weights=None, heldout_tasks: int = 1000) -> dict:
    """Write every hand-built model into the zoo (sealed ``model/`` dirs), with its catalogue
    (``handbuilt.json``: held-out regret in closed loop and the NumPy algorithm's on the
    same tasks) and logit fingerprints (``handbuilt_fingerprints.npz``)."""
    import json
    import shutil
    from pathlib import Path

    from ad.checkpoints import load_model, save_model
    from ad.evaluate import eval_tasks
    from ad.utils import atomic_write_text
    from ad.zoo import build as zb

    import envs

    weights = Path(weights or zb.WEIGHTS)
    entries, prints = {}, {}
    for hb in HANDBUILT:
        cfg, params = build(hb.num_arms, hb.algorithm)
        arch = zb.Arch(cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.mlp_dim)
        name = f"{hb.family}/{arch.name}"
        dest = weights / name / "seed0"
        if dest.exists():
            shutil.rmtree(dest)
        save_model(dest, cfg, params, env="bernoulli-bandit",
                   env_overrides={"num_arms": hb.num_arms}, source=f"handbuilt:{hb.algorithm}")
        model = load_model(dest)
        prints[f"{name}/seed0"] = zb.fingerprint(model)
        env = envs.make("bernoulli-bandit", num_arms=hb.num_arms)
        tasks = eval_tasks(env, "test", heldout_tasks, jax.random.key(0))
        stack = jax.tree.map(lambda x: x[None], model.params)
        reg = zb.model_regret(stack, cfg, env, tasks, jax.random.key(1), 100)[0]
        ref = algorithm_rollout(np.asarray(tasks.means, np.float64), 100,
                                np.random.default_rng(0), hb.algorithm)
        ref_reg = np.asarray(zb.pseudo_regret(jnp.asarray(tasks.means), jnp.asarray(ref)))
        entries[name] = {
            "family": hb.family, **dataclasses.asdict(arch), "context": cfg.context,
            "num_params": zb.num_params(params), "best_seed": 0, "seeds": [0], "steps": [0],
            "metric": "regret", "heldout": [zb.Score.of(reg)._asdict()],
            "algorithm": hb.algorithm, "bonus": DEFAULT_BONUS if hb.algorithm == "bonus" else 0.0,
            "algorithm_regret": zb.Score.of(ref_reg)._asdict(), "handbuilt": True}
        atomic_write_text(weights / name / "card.md", _card(hb, name, entries[name]))
    atomic_write_text(weights / "handbuilt.json", json.dumps({"entries": entries}, indent=1))
    zb._save_npz(weights / "handbuilt_fingerprints.npz", prints)
    return entries


def _card(hb: HandBuilt, name: str, e: dict) -> str:
    alg = ("greedy on empirical means, unpulled arms first" if hb.algorithm == "greedy" else
           f"greedy on m_a + {DEFAULT_BONUS:.4f} / (n_a + 1), unpulled arms first")
    h, r = e["heldout"][0], e["algorithm_regret"]
    return f"""# {name} (hand-built)

- Algorithm: {alg}; weights written by `ad/zoo/handbuilt.py` (mechanism in its docstring).
- Architecture: d_model {e['d_model']}, 1 layer, {e['num_heads']} heads, attention-only,
  positions "none", context {e['context']}; {e['num_params']} parameters (most are zero).
- Held-out: pseudo-regret over 100 pulls on 1000 test-stream tasks of the
  {hb.num_arms}-armed Bernoulli bandit, sampling at temperature 1:
  {h['mean']:.2f} ± {h['ci']:.2f}; the NumPy algorithm on the same tasks
  {r['mean']:.2f} ± {r['ci']:.2f}.
- Rebuild: `python -m ad.zoo.handbuilt` (deterministic: no training).
"""


if __name__ == "__main__":
    for name, e in ship().items():
        print(f"{name}: {e['num_params']} params, held-out regret "
              f"{e['heldout'][0]['mean']:.2f} ± {e['heldout'][0]['ci']:.2f}, "
              f"algorithm {e['algorithm_regret']['mean']:.2f} ± {e['algorithm_regret']['ci']:.2f}")
