"""Linear probes on activations, split by task: is a variable linearly readable, and where?

``probe(features, labels, groups)`` fits a ridge regression (real labels, score R²) or an
L2-regularised multinomial logistic regression (integer classes, score accuracy) on
``features`` (n, d) and scores it on held-out *groups* — a group is a task (or a
history): every position of a group is on one side of each split, never some positions
of a task in training and others in test, since positions within a task share the task's
variables and a probe could then memorise tasks instead of reading the variable.

Each result comes with controls:

* **shuffled labels** — the same probe, the same split, on labels permuted across all
  positions (seeded). A probe that scores well on shuffled labels is fitting noise or the
  group structure; the gap to it is what the features say.
* **embedding only** (``probe_hook``) — the same probe on ``hook_embed`` at the same
  positions. A variable the input embedding already carries (the cell, the last reward)
  says nothing about what the layers compute; the gap to it does.

Both fits are one jitted call: the folds are expressed as 0/1 sample weights over all
positions (same shapes for every fold), so folds and the shuffled control are ``vmap``-ed.
Features are standardised on each fold's training positions (the penalty then treats
every feature alike); ``ProbeResult.direction`` is mapped back to the raw activation
space, ready for ``ad.hooks.steer``: for ridge, adding ``alpha * direction / |direction|²``
to the activation raises the probe's prediction by ``alpha``; for logistic,
``direction[c] - direction[c']`` raises class ``c``'s logit against ``c'``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ad.hooks import hook_axes


class ProbeResult(NamedTuple):
    """A probe's held-out scores, its controls and its direction."""

    kind: str  # "ridge" (score: R²) or "logistic" (score: accuracy)
    score: float  # mean held-out score over folds
    fold_scores: np.ndarray  # (folds,)
    control_score: float  # the same probe on shuffled labels, same split
    control_fold_scores: np.ndarray  # (folds,)
    direction: np.ndarray  # ridge: (d,) or (k, d) for k targets; logistic: (classes, d)
    intercept: np.ndarray  # ridge: () or (k,); logistic: (classes,)
    classes: np.ndarray | None  # logistic: the label of each row of ``direction``
    embed_score: float | None = None  # probe_hook: the same probe on hook_embed
    embed_fold_scores: np.ndarray | None = None

    def predict(self, features) -> np.ndarray:
        """Ridge: predictions (n,) / (n, k); logistic: the predicted labels (n,)."""
        x = np.asarray(features, np.float64).reshape(len(features), -1)
        out = x @ np.asarray(self.direction).reshape(-1, x.shape[1]).T + self.intercept
        if self.kind == "logistic":
            return self.classes[np.argmax(out, axis=1)]
        return out[:, 0] if np.ndim(self.direction) == 1 else out


# ----------------------------------------------------------------------------------------
# Splits by group
# ----------------------------------------------------------------------------------------
def group_folds(groups, folds: int = 5, *, test_fraction: float | None = None,
                seed: int = 0) -> np.ndarray:
    """(folds, n) bool test masks: the groups shuffled (seeded) and dealt into ``folds``
    parts, each the test set of one fold (k-fold); with ``test_fraction``, one split whose
    test set is that fraction of the groups (rounded, at least one). Every group lies
    wholly in or out of each test set."""
    groups = np.asarray(groups).reshape(-1)
    names = np.unique(groups)
    rng = np.random.default_rng(seed)
    order = names[rng.permutation(len(names))]
    if test_fraction is not None:
        if not 0 < test_fraction < 1:
            raise ValueError(f"group_folds: test_fraction must be in (0, 1), got "
                             f"{test_fraction}")
        k = min(max(int(round(test_fraction * len(names))), 1), len(names) - 1)
        parts = [order[:k]]
    else:
        if not 2 <= folds <= len(names):
            raise ValueError(f"group_folds: folds={folds} needs 2 <= folds <= the number of "
                             f"groups ({len(names)})")
        parts = np.array_split(order, folds)
    if len(names) < 2:
        raise ValueError(f"group_folds: a split by group needs >= 2 groups, got {len(names)}")
    return np.stack([np.isin(groups, p) for p in parts])


# ----------------------------------------------------------------------------------------
# The fits (one fold; vmapped over folds and label sets)
# ----------------------------------------------------------------------------------------
def _standardise(x, w):
    """Weighted mean and scale of each feature over the training positions."""
    n = jnp.sum(w)
    mu = (w @ x) / n
    sd = jnp.sqrt((w @ (x - mu) ** 2) / n)
    return mu, jnp.where(sd > 1e-6, sd, 1.0)


def _ridge_fold(x, y, train, test, l2):
    """Closed-form ridge on the training rows; R² on the test rows (averaged over
    targets). Returns (score, raw-space weights (d, k), intercept (k,))."""
    w = train.astype(x.dtype)
    mu, sd = _standardise(x, w)
    z = (x - mu) / sd
    ybar = (w @ y) / jnp.sum(w)
    a = z.T @ (w[:, None] * z) + l2 * jnp.sum(w) * jnp.eye(x.shape[1], dtype=x.dtype)
    beta = jnp.linalg.solve(a, z.T @ (w[:, None] * (y - ybar)))  # (d, k)
    pred = z @ beta + ybar
    v = test.astype(x.dtype)[:, None]
    ytest = jnp.sum(v * y, 0) / jnp.sum(v)
    r2 = 1.0 - jnp.sum(v * (y - pred) ** 2, 0) / jnp.maximum(jnp.sum(v * (y - ytest) ** 2, 0),
                                                             1e-12)
    coef = beta / sd[:, None]
    return jnp.mean(r2), coef, ybar - mu @ coef


def _logistic_fold(x, y, train, test, l2, num_classes, steps, lr):
    """Multinomial logistic regression (L2 on the standardised weights, bias free) by
    full-batch Adam on the training rows; accuracy on the test rows. Returns (score, raw-space
    weights (d, classes), intercept (classes,))."""
    w = train.astype(x.dtype)
    mu, sd = _standardise(x, w)
    z = (x - mu) / sd
    onehot = jax.nn.one_hot(y, num_classes, dtype=x.dtype)

    def loss(p):
        logits = z @ p["w"] + p["b"]
        nll = -jnp.sum(onehot * jax.nn.log_softmax(logits), -1)
        return jnp.sum(w * nll) / jnp.sum(w) + 0.5 * l2 * jnp.sum(p["w"] ** 2)

    p = {"w": jnp.zeros((x.shape[1], num_classes), x.dtype),
         "b": jnp.zeros((num_classes,), x.dtype)}
    # Full-batch Adam on a convex, standardised problem: converges in a few hundred steps
    # and compiles in a fraction of the time L-BFGS's line search takes under vmap.
    opt = optax.adam(lr)
    grad = jax.grad(loss)

    def step(carry, _):
        p, state = carry
        updates, state = opt.update(grad(p), state, p)
        return (optax.apply_updates(p, updates), state), None

    (p, _), _ = jax.lax.scan(step, (p, opt.init(p)), None, length=steps)
    correct = jnp.argmax(z @ p["w"] + p["b"], -1) == y
    v = test.astype(x.dtype)
    acc = jnp.sum(v * correct) / jnp.sum(v)
    coef = p["w"] / sd[:, None]
    return acc, coef, p["b"] - mu @ coef


@partial(jax.jit, static_argnames=("kind", "num_classes", "steps"))
def _fit(x, ys, tests, l2, kind, num_classes, steps, lr):
    """Scores for every (label set, fold): ``ys`` (L, n[, k]), ``tests`` (F, n)."""
    if kind == "ridge":
        fold = lambda y, t: _ridge_fold(x, y, ~t, t, l2)  # noqa: E731
    else:
        fold = lambda y, t: _logistic_fold(x, y, ~t, t, l2, num_classes, steps, lr)  # noqa: E731
    return jax.vmap(lambda y: jax.vmap(lambda t: fold(y, t))(tests))(ys)


def probe(features, labels, groups, kind: str = "ridge", *, folds: int = 5,
          test_fraction: float | None = None, l2: float = 1e-3, seed: int = 0,
          steps: int = 300, lr: float = 0.1) -> ProbeResult:
    """Fit a linear probe of ``labels`` from ``features``, scored on held-out groups.

    features: (n, d) (trailing dims are flattened); labels: (n,) real (ridge; (n, k) for
    k targets, R² averaged) or (n,) classes of any hashable dtype (logistic); groups: (n,)
    the task (or history) of each position. Split: ``group_folds`` (k-fold over groups,
    or one split with ``test_fraction`` of the groups held out), seeded by ``seed``, which
    also seeds the shuffled-label control. ``l2``: the penalty on standardised weights
    (ridge: per training position). ``steps``, ``lr``: full-batch Adam (logistic).
    The direction and intercept are refitted on all positions.
    """
    if kind not in ("ridge", "logistic"):
        raise ValueError(f"probe: kind must be 'ridge' or 'logistic', got {kind!r}")
    x = np.asarray(features, np.float32)
    x = x.reshape(x.shape[0], -1)
    labels = np.asarray(labels)
    groups = np.asarray(groups).reshape(-1)
    n = x.shape[0]
    if labels.shape[0] != n or groups.shape[0] != n:
        raise ValueError(f"probe: {n} feature rows, {labels.shape[0]} labels and "
                         f"{groups.shape[0]} group ids; they must match")
    if not np.isfinite(x).all():
        raise ValueError("probe: features contain NaN or inf")
    tests = group_folds(groups, folds, test_fraction=test_fraction, seed=seed)
    shuffled = labels[np.random.default_rng(seed + 1).permutation(n)]
    classes = None
    if kind == "logistic":
        if labels.ndim != 1:
            raise ValueError(f"probe: logistic labels must be (n,) classes, got "
                             f"{labels.shape}")
        classes, y = np.unique(labels, return_inverse=True)
        y_shuf = np.searchsorted(classes, shuffled)
        ys = np.stack([y, y_shuf]).astype(np.int32)
        num_classes = len(classes)
        if num_classes < 2:
            raise ValueError(f"probe: logistic needs >= 2 classes, got {classes.tolist()}")
    else:
        y = labels.astype(np.float32)
        ys = np.stack([y, shuffled.astype(np.float32)])
        ys = ys if y.ndim == 2 else ys[..., None]
        num_classes = 0
    # one call: every fold, plus a last "fold" that trains on all positions (its score,
    # over an empty test set, is not read) for the reported direction
    everything = np.zeros((1, n), bool)
    scores, coef, icpt = _fit(x, ys, np.concatenate([tests, everything]), l2, kind,
                              num_classes, steps, lr)
    scores = np.asarray(scores, np.float64)[:, :-1]
    coef, icpt = np.asarray(coef[0, -1]).T, np.asarray(icpt[0, -1])  # (k or classes, d)
    if kind == "ridge" and labels.ndim == 1:
        coef, icpt = coef[0], icpt[0]
    return ProbeResult(kind=kind, score=float(scores[0].mean()), fold_scores=scores[0],
                       control_score=float(scores[1].mean()), control_fold_scores=scores[1],
                       direction=coef, intercept=icpt, classes=classes)


def _at_steps(activation, step_mask, name: str) -> np.ndarray:
    """The activation rows at the selected steps: (n, ...) from (B, T or N, ...)."""
    activation = np.asarray(activation)
    axes = hook_axes(name)
    if axes[:2] not in (("batch", "pos"), ("batch", "step")):
        raise ValueError(f"probe_hook: {name!r} has axes {axes}; probes read hooks indexed "
                         f"(batch, position, ...)")
    B, T = step_mask.shape
    if activation.shape[0] != B or activation.shape[1] % T:
        raise ValueError(f"probe_hook: {name!r} is {activation.shape}, the step mask "
                         f"{step_mask.shape}")
    K = activation.shape[1] // T  # tokens per step (1 for step-indexed hooks)
    tokens = np.zeros((B, T * K), bool)  # as streams.token_positions: token t*K + K-1
    tokens[:, K - 1::K] = step_mask
    return activation[tokens]


def probe_hook(activations: Mapping, hook: str, labels, groups, positions_mask,
               kind: str = "ridge", *, baseline: str | None = "hook_embed",
               **kwargs) -> ProbeResult:
    """``probe`` on one hook's activations at the selected steps, with the embedding-only
    control.

    ``activations``: ``{hook name: (B, N or T, ...)}`` (an activation cache of a full
    forward over B streams of T steps); ``positions_mask`` (B, T) bool: the steps to probe
    (``ad.interp.streams.select``), read at the token that predicts each step's action;
    ``labels`` (B, T[, k]) per step; ``groups`` (B,) per stream (task id) or (B, T).
    ``baseline``: the hook of the embedding-only control (None: skip it); its score is
    ``embed_score``. ``kwargs`` go to ``probe``.
    """
    mask = np.asarray(positions_mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"probe_hook: positions_mask must be (B, T), got {mask.shape}")
    if hook not in activations:
        raise KeyError(f"probe_hook: {hook!r} is not in the activations (have "
                       f"{sorted(activations)[:8]}...)")
    groups = np.asarray(groups)
    groups = np.broadcast_to(groups[:, None] if groups.ndim == 1 else groups, mask.shape)
    y = np.asarray(labels)[mask]
    features = _at_steps(activations[hook], mask, hook)
    res = probe(features, y, groups[mask], kind, **kwargs)
    # the direction in the hook's own shape (e.g. (H, Dh) for hook_z), ready for steer
    res = res._replace(direction=res.direction.reshape(
        res.direction.shape[:-1] + features.shape[1:]))
    if baseline is None:
        return res
    if baseline not in activations:
        raise KeyError(f"probe_hook: the baseline {baseline!r} is not in the activations; "
                       f"capture it or pass baseline=None")
    base = probe(_at_steps(activations[baseline], mask, baseline), y, groups[mask], kind,
                 **kwargs)
    return res._replace(embed_score=base.score, embed_fold_scores=base.fold_scores)
