"""Experiment 7 (patching half): which heads carry one reward, and does ablating them remove
in-context improvement while single-episode competence survives?

    python -m experiments.study.reward_patching --runs /work/tut/runs --rollouts 4

Per training seed, on the source's held-out histories (``C.source_histories``):

1. *Pairs that differ in one reward* (``one_reward_windows``). Bandit: the clean context is
   a stream's first ``BANDIT_STEP + 1`` pulls (the model reads whole streams from their
   start), the corrupted one the same with the reward of one pull ``j`` flipped (``1 - r``,
   read at least ``MIN_LAG`` pulls before the metric step, the last one). Dark Room: the
   first paid step of an episode (the first goal visit; the earliest ``DARK_CANDIDATES``
   per history) has its reward set to 0; the metric step is the first step of the next
   episode and the context the ``receptive_field + 1`` steps ending there. A candidate is
   kept when the total variation between the clean and corrupted policies at the metric
   step is >= ``TV_MIN``; at most ``MAX_PAIRS`` kept pairs are patched.
2. *Exact activation patching* (``ad.interp.patching.patch_sweep``, clean -> corrupted, one
   pair at a time so each pair is normalised on its own): the logit difference between the
   action the clean reward promotes most and the one the corruption promotes most,
   0 = corrupted, 1 = clean. Grids: each head's ``attn.hook_z`` at every position (this
   names the heads: mean recovered fraction >= ``NAME_MIN``, at least the top one, at most
   half the heads), each head at the token that reads the flipped reward and at the metric
   token, and ``hook_resid_pre`` at those two tokens. Control that must be 0: the first 4
   clean contexts patched into themselves, head by head (max |change of log p(a_clean)|;
   zero up to float32 rounding, ~1e-7: the sweep's edited, vmapped graph rounds differently
   from the plain forward).
3. *Causal test in closed loop* (``reward_path.closed_loop``: the same rollouts, keys and
   training means as experiment 7's closed-loop half): the named heads mean-ablated
   together, against ``RANDOM_DRAWS`` draws of as many random other heads; in-context
   improvement kept and competent-prompt return kept (ablated / none).

Writes ``<out>/reward_patching-<subject>.{json,png}``.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ad.interp.patching import patch_sweep  # noqa: E402
from ad.interp.streams import Stream, episode_index, to_inputs  # noqa: E402
from ad.plots import save_figure  # noqa: E402
from experiments.study import common as C  # noqa: E402
from experiments.study import reward_path  # noqa: E402

EXPERIMENT = "reward_patching"
TV_MIN = 0.1  # a pair is kept when one reward moves the policy at least this far
BANDIT_STEP = 30  # bandit metric step: the policy at pull 31, after 30 pulls
MIN_LAG = 2  # the flipped reward is read >= 2 steps before the metric step (carried, not seen)
DARK_CANDIDATES = 40  # Dark Room: candidate first goal visits per history (the earliest)
MAX_PAIRS = {"bandit": 64, "darkroom": 32}
NAME_MIN = 0.2  # a head is named when patching it recovers >= 20% of the clean behaviour
RANDOM_DRAWS = 5


class Pairs(NamedTuple):
    """Clean and corrupted windows (P, W) whose last step is the metric step."""

    clean: Stream
    corrupt: Stream
    flip: np.ndarray  # (P,) the window step whose reward differs (read at flip + 1)
    row: np.ndarray  # (P,) the held-out history each window comes from


def one_reward_windows(stream: Stream, row, flip, end, window: int, value) -> Pairs:
    """Windows of ``window`` steps of ``stream`` ending at step ``end`` of history ``row``;
    the corrupted copy has ``reward[flip] = value`` (per candidate: arrays (P,))."""
    row, flip, end = (np.asarray(x, np.int64) for x in (row, flip, end))
    if np.any(end < window - 1) or np.any(flip > end - MIN_LAG) or np.any(flip < end - window + 1):
        raise ValueError("one_reward_windows: every window must lie in its stream and hold "
                         f"its flipped step >= {MIN_LAG} steps before its end")
    steps = end[:, None] - window + 1 + np.arange(window)  # (P, W)
    clean = jax.tree.map(lambda x: np.asarray(x)[row[:, None], steps], stream)
    local = flip - (end - window + 1)
    reward = clean.reward.copy()
    reward[np.arange(len(row)), local] = np.broadcast_to(np.asarray(value, np.float32), row.shape)
    return Pairs(clean, clean._replace(reward=reward), local, row)


def bandit_candidates(stream: Stream, step: int = BANDIT_STEP) -> Pairs:
    """Every pull ``j <= step - MIN_LAG`` of every stream flipped, the window pulls 0..step."""
    B = stream.action.shape[0]
    row, flip = np.divmod(np.arange(B * (step - MIN_LAG + 1)), step - MIN_LAG + 1)
    value = 1.0 - np.asarray(stream.reward)[row, flip]
    return one_reward_windows(stream, row, flip, np.full_like(row, step), step + 1, value)


def darkroom_candidates(stream: Stream, window: int, per_history: int = DARK_CANDIDATES) -> Pairs:
    """The first paid step of an episode set to 0, the metric step the next episode's first
    step, the earliest ``per_history`` per stream whose window fits in it."""
    ep = episode_index(stream)
    paid = np.asarray(stream.reward) > 0
    rows, flips, ends = [], [], []
    for b in range(ep.shape[0]):
        starts = np.flatnonzero(np.diff(ep[b], prepend=-1))  # first step of every episode
        found = 0
        for e in range(len(starts) - 1):
            visits = np.flatnonzero(paid[b, starts[e]:starts[e + 1]])
            # the next episode's first step must fit a whole window and read the episode's
            # last reward only (a visit at the episode's last step is read at the metric step)
            if not visits.size or starts[e + 1] < window - 1 or \
                    starts[e] + visits[0] > starts[e + 1] - MIN_LAG:
                continue
            rows.append(b)
            flips.append(starts[e] + visits[0])
            ends.append(starts[e + 1])
            found += 1
            if found == per_history:
                break
    return one_reward_windows(stream, rows, flips, ends, window, 0.0)


def last_policies(model, stream: Stream) -> np.ndarray:
    """(P, A) the model's policy at the last step of each window (``common.policy``)."""
    return C.policy(model, stream, chunk=512)[:, -1]


class Selected(NamedTuple):
    pairs: Pairs  # the kept pairs that are patched
    a_clean: np.ndarray  # (P,) the action the clean reward promotes most
    a_corrupt: np.ndarray  # (P,) the action the corruption promotes most
    tv: np.ndarray  # (P,) total variation between the two policies at the metric step
    candidates: int
    kept: int  # candidates with tv >= TV_MIN (before the MAX_PAIRS cap)


def select(model, cands: Pairs, max_pairs: int, rng) -> Selected:
    """The candidates whose policy at the metric step moves by >= ``TV_MIN``, at most
    ``max_pairs`` of them (a seeded draw)."""
    p, q = last_policies(model, cands.clean), last_policies(model, cands.corrupt)
    tv = 0.5 * np.abs(p - q).sum(-1)
    ok = np.flatnonzero(tv >= TV_MIN)
    take = np.sort(rng.choice(ok, min(max_pairs, ok.size), replace=False))
    pairs = jax.tree.map(lambda x: np.asarray(x)[take], cands)
    return Selected(pairs, np.argmax(p - q, -1)[take], np.argmax(q - p, -1)[take], tv[take],
                    int(tv.size), int(ok.size))


def patch_pairs(model, sel: Selected) -> dict:
    """Per pair, the recovered fraction of every head (all positions), of every head and the
    residual at the reward-reading and the metric tokens, and the self-patch control."""
    cfg, params = model.config, model.params
    if cfg.tokens_per_step != 1:
        raise ValueError("reward_patching reads one token per step (token_layout='step')")
    clean, corrupt = to_inputs(sel.pairs.clean, cfg), to_inputs(sel.pairs.corrupt, cfg)
    heads, head_at, resid_at, control = [], [], [], []
    for k in range(len(sel.a_clean)):
        one = lambda x: jax.tree.map(lambda v: v[k:k + 1], x)  # noqa: E731
        c, x = one(clean), one(corrupt)
        acts = dict(a_clean=sel.a_clean[k], a_corrupt=sel.a_corrupt[k])
        at = [int(sel.pairs.flip[k]) + 1, -1]  # the token reading the flipped reward; the last
        heads.append(patch_sweep(params, cfg, c, x, "attn.hook_z", "layer_head", **acts).values)
        head_at.append(np.asarray(patch_sweep(params, cfg, c, x, "attn.hook_z", "layer_head_pos",
                                              **acts).values)[..., at])
        resid_at.append(np.asarray(patch_sweep(params, cfg, c, x, "hook_resid_pre", "layer_pos",
                                               **acts).values)[..., at])
        if k < 4:  # a context patched into itself: every head must change nothing
            r = patch_sweep(params, cfg, c, c, "attn.hook_z", "layer_head", metric="logprob",
                            **acts)
            control.append(float(np.max(np.abs(np.asarray(r.values) - r.corrupted))))
    return {"heads": np.stack(heads), "head_at": np.stack(head_at),  # (P, L, H), (P, L, H, 2)
            "resid_at": np.stack(resid_at), "control": max(control, default=0.0)}  # (P, L, 2)


def name_heads(head_mean: np.ndarray) -> list[tuple[int, int]]:
    """Heads (layer, head) whose mean recovered fraction is >= ``NAME_MIN``, best first; at
    least the top one, at most half of them."""
    order = np.argsort(-head_mean, axis=None)
    n = int(np.clip((head_mean >= NAME_MIN).sum(), 1, head_mean.size // 2))
    return [tuple(int(i) for i in np.unravel_index(o, head_mean.shape)) for o in order[:n]]


def random_sets(named, L: int, H: int, rng) -> list[list[tuple[int, int]]]:
    """``RANDOM_DRAWS`` sets of as many heads as ``named``, drawn among the other heads."""
    others = [(l, h) for l in range(L) for h in range(H) if (l, h) not in named]
    return [[others[i] for i in sorted(rng.choice(len(others), len(named), replace=False))]
            for _ in range(RANDOM_DRAWS)]


def label(heads) -> str:
    return "+".join(f"L{l}H{h}" for l, h in heads)


def one_seed(subject: C.Subject, i: int, cands: Pairs, prompt) -> dict:
    m, config = subject.models[i], subject.config
    rng = np.random.default_rng([config.key, config.seeds[i]])
    sel = select(m, cands, MAX_PAIRS[config.subject], rng)
    C.say(f"{config.subject} seed {config.seeds[i]}: {sel.kept} of {sel.candidates} candidate "
          f"pairs move the policy by TV >= {TV_MIN}; patching {len(sel.a_clean)}")
    if len(sel.a_clean) < 2:  # one reward barely moves this model: a result, not an error
        C.say(f"{config.subject} seed {config.seeds[i]}: too few pairs to patch; skipped")
        return {"seed": config.seeds[i], "candidates": sel.candidates, "kept": sel.kept,
                "patched": len(sel.a_clean), "named": None}
    patched = C.memo(config, "reward_patching", C.model_id(m),
                     (sel.pairs, sel.a_clean, sel.a_corrupt), lambda: patch_pairs(m, sel))
    L, H = m.config.num_layers, m.config.num_heads
    named = name_heads(patched["heads"].mean(0))
    draws = random_sets(named, L, H, rng)
    C.say(f"{config.subject} seed {config.seeds[i]}: named {label(named)}; ablating them and "
          f"{RANDOM_DRAWS} random sets in closed loop")
    where = reward_path.set_masks(m.config, [named] + draws)
    kept = C.memo(config, "reward_patching_loop", C.model_id(m),
                  (subject.tasks, where, prompt, config.key, i),  # keys depend on i
                  lambda: reward_path.closed_loop(subject, i, where, prompt))
    frac = lambda x: x.mean(1) / x[0].mean()  # noqa: E731  (cells,): ablated / none
    imp, comp = frac(kept.improvement), frac(kept.competence)
    per_pair = lambda x: {"mean": np.mean(x, 0).tolist(),  # noqa: E731
                          "ci95": (1.96 * np.std(x, 0, ddof=1) / np.sqrt(len(x))).tolist()}
    return {"seed": config.seeds[i], "candidates": sel.candidates, "kept": sel.kept,
            "patched": len(sel.a_clean), "tv_patched_mean": float(sel.tv.mean()),
            "flip_lag_steps": (cands.clean.action.shape[1] - 1 - sel.pairs.flip).tolist(),
            "head": per_pair(patched["heads"]),  # (L, H): every position
            "head_at_reward_token": per_pair(patched["head_at"][..., 0]),
            "head_at_metric_token": per_pair(patched["head_at"][..., 1]),
            "resid_pre_at_reward_token": per_pair(patched["resid_at"][..., 0]),
            "resid_pre_at_metric_token": per_pair(patched["resid_at"][..., 1]),
            "identical_patch_max_abs": patched["control"],
            "named": label(named), "random": [label(d) for d in draws],
            "improvement_none": float(kept.improvement[0].mean()),
            "competence_none": float(kept.competence[0].mean()),
            "improvement_kept_named": float(imp[1]),
            "improvement_kept_random": float(imp[2:].mean()),
            "improvement_kept_random_draws": imp[2:].tolist(),
            "competence_kept_named": float(comp[1]),
            "competence_kept_random": float(comp[2:].mean()),
            "competence_kept_random_draws": comp[2:].tolist(),
            "improvement_named_minus_none_over_tasks":
                C.over_tasks(kept.improvement[1] - kept.improvement[0]),
            "competence_named_minus_none_over_tasks":
                C.over_tasks(kept.competence[1] - kept.competence[0])}


def compute(config: C.StudyConfig) -> dict:
    """This experiment's results for one subject (``C.run`` reuses or records them)."""
    subject = C.load_subject(config)
    C.say(f"{config.subject}: the source learning {subject.n} held-out tasks from scratch")
    stream, _ = C.source_histories(subject)
    if subject.bandit:
        cands = bandit_candidates(stream)
    else:
        cands = darkroom_candidates(stream, subject.models[0].config.receptive_field + 1)
    prompt = reward_path.competent_prompt(subject)
    seeds = [one_seed(subject, i, cands, prompt) for i in range(len(subject.models))]
    done = [s for s in seeds if s["named"]]  # seeds with enough pairs to patch
    over = lambda k: C.over_seeds([s[k] for s in done]) if done else None  # noqa: E731
    diff = lambda k: C.over_seeds([s[f"{k}_named"] - s[f"{k}_random"]  # noqa: E731
                                   for s in done]) if done else None
    results = {
        "summary": {
            "candidates_per_seed": [s["candidates"] for s in seeds],
            "kept_per_seed": [s["kept"] for s in seeds],
            "patched_per_seed": [s["patched"] for s in seeds],
            "named_heads_per_seed": [s["named"] for s in seeds],
            "identical_patch_max_abs": max((s["identical_patch_max_abs"] for s in done),
                                           default=None),
            "improvement_kept_named": over("improvement_kept_named"),
            "improvement_kept_random": over("improvement_kept_random"),
            "competence_kept_named": over("competence_kept_named"),
            "competence_kept_random": over("competence_kept_random"),
            "improvement_kept_named_minus_random": diff("improvement_kept"),
            "competence_kept_named_minus_random": diff("competence_kept"),
        },
        "seeds": seeds,
        "protocol": {"tv_min": TV_MIN, "min_lag": MIN_LAG, "name_min": NAME_MIN,
                     "random_draws": RANDOM_DRAWS, "max_pairs": MAX_PAIRS[config.subject],
                     "metric": "logit difference a_clean - a_corrupt at the metric step, "
                               "normalised per pair (0 corrupted, 1 clean)",
                     "pairs": (f"bandit: pulls 0..{BANDIT_STEP}, one earlier pull's reward "
                               "flipped" if subject.bandit else
                               f"Dark Room: first goal visit of an episode set to 0 (earliest "
                               f"{DARK_CANDIDATES} per history), metric at the next episode's "
                               "first step")},
    }
    plot(subject, results)
    return results


def plot(subject: C.Subject, results: dict) -> None:
    seeds = [s for s in results["seeds"] if s["named"]]
    if not seeds:
        return
    fig = plt.figure(figsize=(3.2 * max(len(seeds), 2), 6.4), layout="constrained")
    grid = fig.add_gridspec(2, len(seeds))
    top = []
    for i, s in enumerate(seeds):
        ax = fig.add_subplot(grid[0, i])
        top.append(ax)
        v = np.asarray(s["head"]["mean"])
        im = ax.imshow(v, cmap="RdBu_r", vmin=-1, vmax=1)
        for (l, h), x in np.ndenumerate(v):
            ax.text(h, l, f"{x:.2f}", ha="center", va="center", fontsize=7)
        ax.set(xlabel="head", ylabel="layer", xticks=range(v.shape[1]), yticks=range(v.shape[0]),
               title=f"seed {s['seed']}: {s['patched']} pairs\nnamed {s['named']}")
        ax.title.set_fontsize(8)
    fig.colorbar(im, ax=top, shrink=0.8, label="recovered fraction\n(clean → corrupted)")
    ax = fig.add_subplot(grid[1, :])
    keys = [("improvement_kept_named", "improvement\nnamed heads"),
            ("improvement_kept_random", "improvement\nrandom heads"),
            ("competence_kept_named", "competence\nnamed heads"),
            ("competence_kept_random", "competence\nrandom heads")]
    width = 0.8 / len(seeds)
    for i, s in enumerate(seeds):
        ax.bar(np.arange(len(keys)) + (i - (len(seeds) - 1) / 2) * width, [s[k] for k, _ in keys],
               width, label=f"seed {s['seed']}")
    ax.axhline(1, color="0.6", lw=0.8)
    ax.set_xticks(range(len(keys)), [t for _, t in keys], fontsize=8)
    ax.set_ylabel("fraction kept (ablated / none)")
    ax.legend(fontsize=8)
    ax.set_title(f"{subject.config.subject}: named vs random heads mean-ablated in closed loop",
                 fontsize=9)
    save_figure(fig, C.output_paths(EXPERIMENT, subject.config)[1])  # atomic


def print_summary(record: dict) -> None:
    s = record["results"]["summary"]
    print(f"\n=== experiment 7 (patching), {record['config']['subject']} ===")
    print(f"  pairs kept / candidates per seed: "
          f"{', '.join(f'{k}/{c}' for k, c in zip(s['kept_per_seed'], s['candidates_per_seed']))}"
          f"; patched {s['patched_per_seed']}")
    print(f"  named heads per seed: {s['named_heads_per_seed']}; identical-pair patch max |effect| "
          f"{s['identical_patch_max_abs']}")
    if s["improvement_kept_named"] is None:
        return
    for k in ("improvement_kept_named", "improvement_kept_random", "competence_kept_named",
              "competence_kept_random", "improvement_kept_named_minus_random",
              "competence_kept_named_minus_random"):
        print(f"  {k}: {C.fmt(s[k])}")


if __name__ == "__main__":
    sys.exit(C.main(sys.modules[__name__]))
