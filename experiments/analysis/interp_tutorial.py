"""The interpretability tutorial's numbers and figures (docs/interp_tutorial.md), made
from trained models on held-out tasks.

For each model (the Dark Room model from PPO histories and the bandit model from UCB1):
1. In context on held-out tasks: ``ad_rollout`` streams (the model's own learning).
2. Cache → logit lens: how close the residual before each layer already is to the final
   policy (KL(final ‖ lens), per layer, early vs late in the stream).
3. Direct logit attribution: what each component (input terms, each head, each MLP,
   biases) writes towards the chosen action against the runner-up, per held-out task.
4. Activation patching between two contexts that differ in one reward: windows of the
   held-out streams ending at a step whose preferred action flips when one earlier
   reward is flipped; sweeps over (layer × position) of the residual and (layer × head)
   of the heads' outputs; attribution patching beside exact patching.
5. In context again, with the head that matters most for the patching metric
   mean-ablated (means over the model's training-task histories), every other head
   ablated as the control, and no ablation: one vmapped rollout call.

    python -m experiments.analysis.interp_tutorial --darkroom runs/darkroom/ad-seed0 \\
        --bandit runs/bandit/ad-seed0 --out docs/interp
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ad import evaluate as ev
from ad import hooks
from ad.checkpoints import load_model
from ad.dataset import load_dataset
from ad.inputs import stream_inputs
from ad.model import ADTransformer
from ad.interp.cache import mean_activations, run_with_cache
from ad.interp.patching import attribution_patch, patch_sweep
from ad.interp.streams import Stream, episode_index, set_reward, to_inputs
from ad.utils import atomic_write_text, provenance

LENS_FILTER = ("hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
               "attn.hook_z", "embed.", "hook_embed")


def _ci(x, axis=0):
    """Mean and 95% normal half-width over ``axis``."""
    x = np.asarray(x, np.float64)
    n = x.shape[axis]
    return x.mean(axis), 1.96 * x.std(axis, ddof=1) / np.sqrt(n)


def held_out_rollout(model, env, key, num_tasks: int, rollouts: int, num_steps: int):
    tasks = ev.repeat_tasks(ev.eval_tasks(env, "test", num_tasks, key), rollouts)
    ro = ev.ad_rollout(model.params, model.config, env, tasks, jax.random.fold_in(key, 1),
                       num_steps, record_policy=True)
    return tasks, ro


def lens_and_dla(model, stream: Stream, task_ids: np.ndarray, split_episode: int) -> dict:
    """Logit lens and DLA over whole held-out streams (every step's prediction)."""
    cfg, params = model.config, model.params
    keep = lambda n: any(f in n for f in LENS_FILTER)  # noqa: E731
    logits, cache = jax.jit(lambda p, i: run_with_cache(p, cfg, i, names_filter=keep))(
        params, to_inputs(stream, cfg))
    lens, labels = cache.logit_lens()
    logp = jax.nn.log_softmax(logits, -1)
    kl = np.asarray(jnp.sum(jnp.exp(logp) * (logp - jax.nn.log_softmax(lens, -1)), -1))
    episode = episode_index(stream)
    early, late = episode < split_episode, episode >= split_episode
    if not early.any() or not late.any():
        raise ValueError(f"logit lens: the cached streams need episodes before and after "
                         f"episode {split_episode + 1} (raise --episodes or --lens-steps)")
    out = {"lens_labels": labels,
           "lens_kl_early": [float(kl[i][early].mean()) for i in range(len(labels))],
           "lens_kl_late": [float(kl[i][late].mean()) for i in range(len(labels))],
           "lens_top1_agreement": [float((np.argmax(lens[i], -1) == np.argmax(logits, -1))
                                         .mean()) for i in range(len(labels))]}
    order = np.argsort(np.asarray(logits), -1)
    chosen, runner_up = order[..., -1], order[..., -2]
    attrs, comp = cache.dla(chosen, incorrect=runner_up, heads=True)
    attrs = np.asarray(attrs)  # (C, B, T)
    per_task = np.stack([attrs[:, task_ids == t].mean(1) for t in np.unique(task_ids)],
                        1)  # (C, tasks)
    mean, half = _ci(per_task, axis=1)
    total = np.take_along_axis(np.asarray(logits), chosen[..., None], -1)[..., 0] - \
        np.take_along_axis(np.asarray(logits), runner_up[..., None], -1)[..., 0]
    out.update({"dla_components": comp, "dla_mean": mean.tolist(), "dla_ci95": half.tolist(),
                "dla_sum_error": float(np.abs(attrs.sum(0) - total).max()),
                "logit_diff_mean": float(total.mean())})
    return out


def one_reward_pairs(model, stream: Stream, window: int, max_pairs: int, candidates: int,
                     rng):
    """Clean/corrupted windows that differ in one flipped reward and whose preferred
    action at the last step differs (searched among random candidates)."""
    cfg, params = model.config, model.params
    B, S = stream.action.shape
    cands = []
    for _ in range(candidates):
        b = int(rng.integers(B))
        end = int(rng.integers(window - 1, S))  # windows cover the receptive field (or
        # start at the stream start when the stream is shorter)
        lag = int(rng.integers(2, min(window, 30)))  # a reward read >= 2 steps back
        cands.append((b, end, end - lag))
    take = lambda s, b, end: jax.tree.map(  # noqa: E731
        lambda x: np.asarray(x)[b:b + 1, end - window + 1:end + 1], s)
    clean = [take(stream, b, e) for b, e, _ in cands]
    corrupt = [set_reward(c, 0, j - (e - window + 1), 1.0 - float(c.reward[0, j - (e - window + 1)]))
               for c, (b, e, j) in zip(clean, cands)]
    cat = lambda xs: jax.tree.map(lambda *a: np.concatenate(a), *xs)  # noqa: E731
    clean_in, corrupt_in = to_inputs(cat(clean), cfg), to_inputs(cat(corrupt), cfg)
    f = jax.jit(lambda p, i: ADTransformer(cfg).apply({"params": p}, i, train=False)[:, -1])
    preferred = lambda i: np.concatenate([np.argmax(f(params, jax.tree.map(  # noqa: E731
        lambda x: x[lo:lo + 256], i)), -1) for lo in range(0, len(cands), 256)])
    flips = np.flatnonzero(preferred(clean_in) != preferred(corrupt_in))
    keep = flips[:max_pairs]
    pick = lambda x: x[keep]  # noqa: E731
    return (jax.tree.map(pick, clean_in), jax.tree.map(pick, corrupt_in),
            {"candidates": len(cands), "flipping": int(flips.size), "pairs": int(keep.size),
             "lags": [int(cands[i][1] - cands[i][2]) for i in keep]})


def patching(model, clean, corrupt, show_positions: int) -> dict:
    cfg, params = model.config, model.params
    resid = patch_sweep(params, cfg, clean, corrupt, "hook_resid_pre", "layer_pos")
    heads = patch_sweep(params, cfg, clean, corrupt, "attn.hook_z", "layer_head")
    t0 = time.perf_counter()
    hp = patch_sweep(params, cfg, clean, corrupt, "attn.hook_z", "layer_head_pos")
    sweep_s = time.perf_counter() - t0
    attr = attribution_patch(params, cfg, clean, corrupt, "attn.hook_z", "layer_head_pos")
    corr = float(np.corrcoef(np.ravel(hp.values), np.ravel(attr.values))[0, 1])
    return {"resid_pre": np.asarray(resid.values)[:, -show_positions:].tolist(),
            "heads": np.asarray(heads.values).tolist(),
            "head_pos_total": np.asarray(hp.values).sum(-1).tolist(),
            "attribution_vs_exact_corr": corr, "ld_clean": resid.clean,
            "ld_corrupted": resid.corrupted, "layer_head_pos_sweep_seconds": sweep_s}


def training_means(model, num_windows: int, key) -> dict:
    """Mean of every layer's hook_z over teacher-forced training-task histories."""
    cfg = model.config
    data = load_dataset(model.dataset)
    W = min(cfg.training_window(), data.num_steps - 1)
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    idx = rng.integers(0, data.num_histories, num_windows)
    start = rng.integers(0, data.num_steps - W, num_windows)
    h = data.read_windows(idx, start, W + 1)
    done = np.logical_or(h.terminated, h.truncated)
    # One step more than the window, then drop it: every kept step reads its true
    # previous step (the first step of a read window reads a stream start).
    inputs = stream_inputs(h.obs, h.action, h.reward, done, cfg)
    inputs = jax.tree.map(lambda x: x[:, 1:], inputs)
    names = [f"blocks.{l}.attn.hook_z" for l in range(cfg.num_layers)]
    return mean_activations(model.params, cfg, inputs, names)


def ablation_curves(model, env, tasks, key, num_steps: int, means: dict) -> np.ndarray:
    """Rollouts with no ablation and each head mean-ablated, one vmapped call:
    actions, rewards, dones (cells, N, S), cell 0 = none, cell 1 + l*H + h = head (l, h)."""
    cfg = model.config
    L, H = cfg.num_layers, cfg.num_heads
    names = [f"blocks.{l}.attn.hook_z" for l in range(L)]
    where = np.zeros((1 + L * H, L, 1, 1, H, 1), bool)
    for l in range(L):
        for h in range(H):
            where[1 + l * H + h, l, 0, 0, h, 0] = True

    def run(w):
        edits = {n: hooks.Intervention(w[l], jnp.float32(0), means[n]) for l, n in enumerate(names)}
        ro = ev.ad_rollout(model.params, cfg, env, tasks, key, num_steps, hooks=edits)
        return ro.action, ro.reward, ro.done
    return jax.jit(jax.vmap(run))(jnp.asarray(where))


def analyse(run: Path, kind: str, out: Path, args, key) -> dict:
    model = load_model(run)
    env = model.env
    cfg = model.config
    bandit = env.max_episode_steps == 1
    episodes = args.bandit_pulls if bandit else args.episodes
    num_steps = episodes * env.max_episode_steps
    t0 = time.perf_counter()
    tasks, ro = held_out_rollout(model, env, key, args.tasks, args.rollouts, num_steps)
    stream = Stream.from_rollout(ro)
    n_tasks = jax.tree.leaves(tasks)[0].shape[0] // args.rollouts
    task_ids = np.repeat(np.arange(n_tasks), args.rollouts)[:, None].repeat(num_steps, 1)
    result = {"run": str(run), "env": model.env_name, "held_out_tasks": n_tasks,
              "rollouts_per_task": args.rollouts, "steps": num_steps}
    lens_steps = min(num_steps, args.lens_steps)
    sub = jax.tree.map(lambda x: np.asarray(x)[:, :lens_steps], stream)
    result.update(lens_and_dla(model, sub, task_ids[:, :lens_steps],
                               split_episode=5 if not bandit else 10))
    window = cfg.receptive_field + 1
    rng = np.random.default_rng(args.seed)
    clean, corrupt, info = one_reward_pairs(model, stream, min(window, num_steps),
                                            args.pairs, args.candidates, rng)
    result["pairs"] = info
    if info["pairs"] >= 2:
        result["patching"] = patching(model, clean, corrupt, args.show_positions)
        heads = np.abs(np.asarray(result["patching"]["heads"]))
        top = np.unravel_index(np.argmax(heads), heads.shape)
    else:
        top = (cfg.num_layers - 1, 0)
    result["top_head"] = [int(top[0]), int(top[1])]
    means = training_means(model, args.mean_windows, key)
    act, rew, done = ablation_curves(model, env, tasks, jax.random.fold_in(key, 2),
                                     num_steps, means)
    curves = np.stack([ev.episode_curve(ev.Rollout(a, r, d), episodes)
                       for a, r, d in zip(act, rew, done)])  # (cells, N, E)
    H = cfg.num_heads
    top_cell = 1 + top[0] * H + top[1]
    per_task = curves.reshape(curves.shape[0], n_tasks, args.rollouts, episodes).mean(2)
    late = slice(episodes - 10, episodes)
    early = slice(0, 5)
    improvement = per_task[..., late].mean(-1) - per_task[..., early].mean(-1)  # (cells, tasks)
    summary = {}
    for c in range(curves.shape[0]):
        label = "none" if c == 0 else f"L{(c - 1) // H}H{(c - 1) % H}"
        m, h = _ci(improvement[c])
        lm, lh = _ci(per_task[c][:, late].mean(-1))
        summary[label] = {"improvement": float(m), "improvement_ci95": float(h),
                          "late_return": float(lm), "late_return_ci95": float(lh)}
        if bandit:
            means_ = np.asarray(tasks.means)
            gap = means_.max(-1, keepdims=True) - np.take_along_axis(means_, np.asarray(act[c]), -1)
            rm, rh = _ci(gap.sum(-1).reshape(n_tasks, args.rollouts).mean(1))
            summary[label].update({"pseudo_regret": float(rm), "pseudo_regret_ci95": float(rh)})
    diff = improvement[top_cell] - improvement[0]
    m, h = _ci(diff)
    others = [c for c in range(1, curves.shape[0]) if c != top_cell]
    result["ablation"] = {"summary": summary, "top_minus_none_improvement": float(m),
                          "top_minus_none_ci95": float(h),
                          "median_other_head_improvement": float(np.median(
                              [summary[k]["improvement"] for k in list(summary)[1:]
                               if k != f"L{top[0]}H{top[1]}"])),
                          "mean_curves": {lab: per_task[c].mean(0).tolist() for c, lab in
                                          [(0, "none"), (top_cell, f"L{top[0]}H{top[1]}")]
                                          + [(o, f"L{(o - 1) // H}H{(o - 1) % H}") for o in others]}}
    optimum = float(np.mean(jax.vmap(env.optimal_return)(tasks)))
    result["optimum"] = optimum
    result["seconds"] = time.perf_counter() - t0
    figures(result, kind, out, bandit)
    return result


def figures(r: dict, kind: str, out: Path, bandit: bool) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    title = "Dark Room (PPO source)" if kind == "darkroom" else "5-armed bandit (UCB1 source)"

    fig, ax = plt.subplots(figsize=(4.5, 3))
    x = np.arange(len(r["lens_labels"]))
    ax.plot(x, r["lens_kl_early"], "o-", label="early in context")
    ax.plot(x, r["lens_kl_late"], "s-", label="late in context")
    ax.set_xticks(x, r["lens_labels"])
    ax.set_ylabel("KL(final policy ‖ lens)")
    ax.set_title(f"Logit lens, {title}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(fig_dir / f"{kind}_lens.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3))
    comp = r["dla_components"]  # the last is the bias term
    ax.bar(np.arange(len(comp)), r["dla_mean"], yerr=r["dla_ci95"], color="tab:blue")
    ax.set_xticks(np.arange(len(comp)), comp, rotation=60, fontsize=7)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel("logit(chosen) − logit(runner-up)")
    ax.set_title(f"Direct logit attribution, {title} (held-out tasks, 95% CI)", fontsize=9)
    fig.tight_layout()
    fig.savefig(fig_dir / f"{kind}_dla.png", dpi=120)
    plt.close(fig)

    if "patching" in r:
        p = r["patching"]
        fig, axes = plt.subplots(1, 2, figsize=(9, 2.8), gridspec_kw={"width_ratios": [3, 1]})
        res = np.asarray(p["resid_pre"])
        im = axes[0].imshow(res, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
        axes[0].set_xlabel(f"position (last {res.shape[1]} tokens of the window)")
        axes[0].set_ylabel("layer")
        axes[0].set_yticks(range(res.shape[0]))
        axes[0].set_title("patch resid_pre: normalised logit diff", fontsize=9)
        axes[0].set_xticks([0, res.shape[1] - 1], [f"−{res.shape[1] - 1}", "last"])
        heads = np.asarray(p["heads"])
        axes[1].imshow(heads, cmap="RdBu", vmin=-1, vmax=1)
        axes[1].set_xlabel("head")
        axes[1].set_ylabel("layer")
        axes[1].set_yticks(range(heads.shape[0]))
        axes[1].set_xticks(range(heads.shape[1]))
        axes[1].set_title("patch each head (all positions)", fontsize=9)
        fig.colorbar(im, ax=axes, shrink=0.8)
        fig.suptitle(f"{title}: clean vs one flipped reward ({r['pairs']['pairs']} pairs)",
                     fontsize=9)
        fig.savefig(fig_dir / f"{kind}_patching.png", dpi=120, bbox_inches="tight")
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.2))
    curves = r["ablation"]["mean_curves"]
    top = f"L{r['top_head'][0]}H{r['top_head'][1]}"
    for lab, c in curves.items():
        if lab in ("none", top):
            continue
        ax.plot(np.arange(1, len(c) + 1), c, color="0.75", lw=0.8)
    ax.plot([], [], color="0.75", lw=0.8, label="each other head ablated")
    ax.plot(np.arange(1, len(curves["none"]) + 1), curves["none"], "k", label="no ablation")
    ax.plot(np.arange(1, len(curves[top]) + 1), curves[top], "tab:red",
            label=f"{top} mean-ablated")
    ax.axhline(r["optimum"], ls="--", color="tab:green", lw=0.8, label="optimum")
    ax.set_xlabel("pull" if bandit else "episode (in context)")
    ax.set_ylabel("reward" if bandit else "return")
    ax.set_title(f"In context with a head ablated, {title}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(fig_dir / f"{kind}_ablation.png", dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--darkroom", type=Path, help="a trained Dark Room run (runs/darkroom/ad-seed0)")
    p.add_argument("--bandit", type=Path, help="a trained bandit run (runs/bandit/ad-seed0)")
    p.add_argument("--out", type=Path, default=Path("docs/interp"), help="JSON and figures/")
    p.add_argument("--tasks", type=int, default=100, help="held-out tasks (Dark Room: all 16)")
    p.add_argument("--rollouts", type=int, default=4, help="rollouts per task")
    p.add_argument("--episodes", type=int, default=100, help="Dark Room episodes in context")
    p.add_argument("--bandit-pulls", type=int, default=100, help="bandit pulls in context")
    p.add_argument("--lens-steps", type=int, default=1000, help="steps cached for lens/DLA")
    p.add_argument("--pairs", type=int, default=64, help="clean/corrupted context pairs")
    p.add_argument("--candidates", type=int, default=2048,
                   help="random (window, flipped reward) candidates searched for pairs")
    p.add_argument("--show-positions", type=int, default=40, help="positions in the figure")
    p.add_argument("--mean-windows", type=int, default=256, help="training windows for means")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    runs = {k: v for k, v in (("darkroom", args.darkroom), ("bandit", args.bandit)) if v}
    if not runs:
        p.error("give --darkroom and/or --bandit (a run directory with model/)")
    for kind, run in runs.items():
        if not (run / "model").is_dir() and not (run / "config.json").exists():
            p.error(f"--{kind} {run}: no trained model there")
    results = {}
    for kind, run in runs.items():
        results[kind] = analyse(run, kind, args.out, args, jax.random.key(args.seed))
        r = results[kind]
        print(f"{kind}: lens KL {['%.3f' % v for v in r['lens_kl_late']]}, DLA sum error "
              f"{r['dla_sum_error']:.1e}, pairs {r['pairs']['pairs']} of {r['pairs']['flipping']} "
              f"flipping, top head {r['top_head']}, "
              f"improvement none {r['ablation']['summary']['none']['improvement']:.3f} vs top "
              f"ablated {r['ablation']['top_minus_none_improvement']:+.3f} "
              f"± {r['ablation']['top_minus_none_ci95']:.3f} ({r['seconds']:.0f} s)",
              flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "tutorial.json", json.dumps(
        {"results": results, "args": {k: str(v) for k, v in vars(args).items()},
         **provenance()}, indent=1))
    print(f"wrote {args.out / 'tutorial.json'} and {args.out / 'figures'}/")


if __name__ == "__main__":
    sys.exit(main())
