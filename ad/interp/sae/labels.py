"""Features labelled by ground truth: which SAE latents read a known variable?

For one SAE and the stores' per-position ground truth (``ad.interp.sae.store``):

* **Variables** (``variables``): binary ones (the best arm is arm a, the previous action
  was a, the previous pull paid, UCB1 / greedy would pull a, the greedy arm is the best,
  the first pull, every arm tried; Dark Room: goal found yet, standing on the goal, the
  previous step paid, previous action a, an episode's first step, the goal's / agent's
  column or row is v) and continuous ones (pulls / empirical / posterior mean of each arm,
  the arm means, the pull index; Dark Room: distance to the goal, cells visited, step in
  episode, episode, the agent's and the goal's coordinates).
* **AUROC** of each feature's activation as a score for each binary variable, on held-out
  tasks (the test store), against a **shuffled control** (the same labels permuted across
  positions; its maximum over all features is the chance level a match must beat);
  **balanced accuracy** of one threshold chosen on *training-task* positions and applied
  to held-out ones (for each variable's best feature); **Pearson correlation** with each
  continuous variable, with the same shuffled control.
* **Logit effect** (``logit_effects``): a feature's decoder direction through the final
  LayerNorm (its scale frozen at the mean over held-out positions) and the unembedding,
  centred over actions — the feature's *direct* path to the action logits.
* **Causal check** (``causal_check``): the feature zeroed inside the spliced SAE (the SAE's
  error term kept, ``Splice(feature=f)``) on held-out streams replayed teacher-forced
  (total-variation change of the policy where the feature is active) and in closed loop
  (regret / return change with the same keys).

A feature *matches* a binary variable when its held-out AUROC ≥ 0.9 and exceeds the
shuffled control's maximum.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ad.interp.sae.models import Splice

MATCH_AUROC = 0.9
PyTree = Any


def variables(store, rows: np.ndarray | None = None) -> tuple[dict, dict]:
    """``(binary, continuous)``: ``{name: (histories, T) array}`` of a store's ground truth
    (module docstring), restricted to history ``rows`` when given."""
    idx = np.arange(store.num_histories) if rows is None else np.asarray(rows)
    m = lambda name: store.meta(name)[idx]  # noqa: E731
    T = store.num_steps
    params = jax.tree.map(lambda x: np.asarray(x)[idx], store.task_params())
    num_actions = int(store.config["model_config"]["num_actions"])
    binary, cont = {}, {}
    prev_action = m("prev_action")
    for a in range(num_actions):
        binary[f"prev_action={a}"] = prev_action == a
    binary["prev_reward>0"] = m("prev_reward") > 0
    cont["episode"] = m("episode").astype(np.float32)
    if hasattr(params, "means"):
        best, ucb, greedy = m("best_arm"), m("ucb1_arm"), m("greedy_arm")
        counts, emp, post = m("arm_counts"), m("arm_emp_means"), m("arm_post_means")
        means = np.broadcast_to(params.means[:, None, :], counts.shape)
        for a in range(num_actions):
            binary[f"best_arm={a}"] = best == a
            binary[f"ucb1_arm={a}"] = ucb == a
            binary[f"greedy_arm={a}"] = greedy == a
            cont[f"pulls[{a}]"] = counts[..., a]
            cont[f"emp_mean[{a}]"] = emp[..., a]
            cont[f"post_mean[{a}]"] = post[..., a]
            cont[f"mean[{a}]"] = means[..., a]
        binary["greedy_is_best"] = greedy == best
        binary["first_pull"] = m("episode") == 0
        binary["all_arms_tried"] = counts.min(-1) > 0
    if hasattr(params, "goal"):
        obs = store.obs()[idx]
        goal = np.broadcast_to(params.goal[:, None, :], obs.shape)
        binary["goal_found"] = m("goal_found")
        binary["at_goal"] = m("at_goal")
        binary["episode_start"] = m("step_in_episode") == 0
        size = int(store.dataset.spec.env_config.get("size", obs.max() + 1))
        for v in range(size):
            binary[f"x={v}"] = obs[..., 0] == v
            binary[f"y={v}"] = obs[..., 1] == v
            binary[f"goal_x={v}"] = goal[..., 0] == v
            binary[f"goal_y={v}"] = goal[..., 1] == v
        cont.update({"goal_distance": m("goal_distance"), "cells_visited": m("cells_visited"),
                     "step_in_episode": m("step_in_episode"), "x": obs[..., 0],
                     "y": obs[..., 1], "goal_x": goal[..., 0], "goal_y": goal[..., 1]})
    assert all(v.shape[:2] == (len(idx), T) for v in {**binary, **cont}.values())
    return binary, {k: np.asarray(v, np.float32) for k, v in cont.items()}


@jax.jit
def _ranks(a):
    """Average ranks (1-based, ties averaged) of each column of ``a`` (n, m)."""
    s = jnp.sort(a, 0)
    lo = jax.vmap(lambda c, v: jnp.searchsorted(c, v, "left"), in_axes=1, out_axes=1)(s, a)
    hi = jax.vmap(lambda c, v: jnp.searchsorted(c, v, "right"), in_axes=1, out_axes=1)(s, a)
    return (lo + hi + 1) / 2.0


def auroc(acts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(V, m) AUROC of each feature (columns of ``acts`` (n, m)) for each binary label
    (columns of ``labels`` (n, V)); ties count one half (Mann–Whitney)."""
    r = np.asarray(_ranks(jnp.asarray(acts, jnp.float32)), np.float64)
    y = np.asarray(labels, np.float64)
    pos = y.sum(0)[:, None]
    neg = len(y) - pos
    return (y.T @ r - pos * (pos + 1) / 2) / np.maximum(pos * neg, 1)


def correlation(acts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(V, m) Pearson correlation of each feature with each continuous variable."""
    a = np.asarray(acts, np.float64)
    v = np.asarray(values, np.float64)
    a = (a - a.mean(0)) / np.maximum(a.std(0), 1e-12)
    v = (v - v.mean(0)) / np.maximum(v.std(0), 1e-12)
    return v.T @ a / len(a)


def balanced_accuracy(train_a, train_y, test_a, test_y, candidates: int = 64) -> float:
    """One threshold on one feature, chosen on training positions (the best balanced
    accuracy among quantile candidates), scored on held-out positions."""
    train_a, test_a = np.asarray(train_a), np.asarray(test_a)
    train_y, test_y = np.asarray(train_y, bool), np.asarray(test_y, bool)
    ts = np.unique(np.quantile(train_a, np.linspace(0, 1, candidates)))

    def bacc(a, y, t):
        pred = a[:, None] > t[None]
        tpr = (pred & y[:, None]).sum(0) / max(y.sum(), 1)
        tnr = (~pred & ~y[:, None]).sum(0) / max((~y).sum(), 1)
        return (tpr + tnr) / 2

    t = ts[int(np.argmax(bacc(train_a, train_y, ts)))]
    return float(bacc(test_a, test_y, np.array([t]))[0])


def logit_effects(splice: Splice, params: PyTree, final_resid: np.ndarray) -> np.ndarray:
    """(m, A) direct effect of each feature's unit activation on the action logits
    (module docstring); ``final_resid`` (n, d) held-out final residuals (the LayerNorm's
    scale is frozen at their mean standard deviation)."""
    w = np.asarray(splice.params["W_dec"], np.float64) / float(splice.scale)  # (m, d)
    w = w - w.mean(-1, keepdims=True)
    sigma = float(np.asarray(final_resid, np.float64).std(-1).mean())
    gamma = np.asarray(params["ln_final"]["scale"], np.float64)
    out = (w * gamma / sigma) @ np.asarray(params["head"]["kernel"], np.float64)
    return out - out.mean(-1, keepdims=True)


def label_features(splice: Splice, train_store, test_store, hook: str, *,
                   positions: int = 20_000, seed: int = 0) -> dict:
    """Held-out AUROC / correlation of every feature with every variable, the shuffled
    controls, and the best feature per variable with its balanced accuracy."""
    rng = np.random.default_rng(seed)

    def sample(store):
        acts = store.activations(hook)
        H, T, d = acts.shape
        flat = rng.choice(H * T, size=min(positions, H * T), replace=False)
        binary, cont = variables(store)
        z = np.asarray(jax.jit(splice.encode)(jnp.asarray(acts.reshape(-1, d)[flat])))
        take = lambda v: {k: np.asarray(x).reshape(H * T)[flat] for k, x in v.items()}  # noqa
        return z, take(binary), take(cont)

    z_tr, b_tr, _ = sample(train_store)
    z, b, c = sample(test_store)
    names = [k for k, v in b.items() if 0 < v.sum() < len(v)]
    Y = np.stack([b[k] for k in names], 1)
    A = auroc(z, Y)  # (V, m)
    perm = rng.permutation(len(z))
    A_ctrl = auroc(z, Y[perm])
    cnames = [k for k, v in c.items() if v.std() > 0]
    C = correlation(z, np.stack([c[k] for k in cnames], 1)) if cnames else np.zeros((0, z.shape[1]))
    C_ctrl = correlation(z, np.stack([c[k] for k in cnames], 1)[perm]) if cnames else C
    freq = (z > 0).mean(0)
    binary_rows = []
    for v, name in enumerate(names):
        f = int(np.argmax(A[v]))
        chance = float(A_ctrl[v].max())
        binary_rows.append({
            "variable": name, "feature": f, "auroc": float(A[v, f]), "control_max": chance,
            "positives": float(Y[:, v].mean()),
            "balanced_accuracy": balanced_accuracy(z_tr[:, f], b_tr[name], z[:, f], Y[:, v]),
            "matches": [int(i) for i in np.flatnonzero((A[v] >= MATCH_AUROC) & (A[v] > chance))],
        })
    cont_rows = []
    for v, name in enumerate(cnames):
        f = int(np.argmax(np.abs(C[v])))
        cont_rows.append({"variable": name, "feature": f, "corr": float(C[v, f]),
                          "control_max": float(np.abs(C_ctrl[v]).max())})
    matched = sorted({f for r in binary_rows for f in r["matches"]})
    return {"binary": binary_rows, "continuous": cont_rows, "matched_features": matched,
            "num_features": int(z.shape[1]), "alive_features": int((freq > 0).sum()),
            "positions": int(len(z)), "frequency": freq.tolist(),
            "auroc": A, "auroc_names": names, "corr": C, "corr_names": cnames}


def causal_check(model, hook: str, splice: Splice, features: list[int], stream,
                 tasks: PyTree, key, num_steps: int) -> list[dict]:
    """Zero each feature in ``features`` inside the spliced SAE: the policy's total-
    variation change on the held-out ``stream`` (teacher-forced) where the feature is
    active, and the closed-loop score change on ``tasks`` with the same keys."""
    from ad import evaluate as ev
    from ad.hooks import run_with_hooks
    from ad.interp.sae.downstream import task_scores
    from ad.interp.streams import to_inputs

    if not features:
        return []
    params, mcfg, env = model.params, model.config, model.env
    feats = jnp.asarray(features, jnp.int32)
    edits = jax.tree.map(lambda x: jnp.broadcast_to(x, (len(features),) + jnp.shape(x)), splice)
    edits = edits.replace(feature=feats, value=jnp.zeros(len(features), jnp.float32))
    inputs = to_inputs(stream, mcfg)
    p_base = jax.nn.softmax(run_with_hooks(params, mcfg, inputs, {hook: splice}), -1)
    p_edit = jax.vmap(lambda e: jax.nn.softmax(run_with_hooks(params, mcfg, inputs, {hook: e}),
                                               -1))(edits)
    tv = 0.5 * jnp.abs(p_edit - p_base[None]).sum(-1)  # (F, B, T)
    acts = jax.jit(splice.encode)(jnp.asarray(_hook_acts(model, hook, inputs)))  # (B, T, m)
    base = ev.ad_rollout(params, mcfg, env, tasks, key, num_steps, hooks={hook: splice})
    edited = jax.vmap(lambda e: ev.ad_rollout(params, mcfg, env, tasks, key, num_steps,
                                              hooks={hook: e}))(edits)
    base_scores = task_scores(env, tasks, jax.device_get(base))
    out = []
    for i, f in enumerate(features):
        active = np.asarray(acts[..., f] > 0)
        ro = jax.tree.map(lambda x: x[i], jax.device_get(edited))
        sc = task_scores(env, tasks, ro)
        out.append({"feature": int(f), "active_frac": float(active.mean()),
                    "tv_where_active": float(np.asarray(tv[i])[active].mean()) if active.any()
                    else 0.0,
                    "actions_changed": float((np.asarray(ro.action)
                                              != np.asarray(base.action)).mean()),
                    "score_change": {k: [float((sc[k] - base_scores[k]).mean()),
                                         float(1.96 * (sc[k] - base_scores[k]).std(ddof=1)
                                               / np.sqrt(len(sc[k])))]
                                     for k in sc}})
    return out


def _hook_acts(model, hook: str, inputs) -> np.ndarray:
    from ad.hooks import run_with_hooks

    _, cache = run_with_hooks(model.params, model.config, inputs, capture=[hook])
    return np.asarray(cache[hook])
