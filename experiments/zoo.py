"""The model zoo's catalogue and frontier: tables and figures from the shipped catalogue.

    python -m experiments.zoo            # writes docs/zoo/{catalogue.md, catalogue.png,
                                         #   training.png, frontier.json}

Reads only what ships (``ad/zoo/weights/catalogue.json`` and ``handbuilt.json``, written
by ``python -m ad.zoo.build`` and ``python -m ad.zoo.handbuilt``): nothing is retrained.

The frontier (the issue's "smallest in-context learner"): a configuration *passes* when
the mean over its five seeds of the held-out score meets the family's bar. Bandits: the
pseudo-regret (100 pulls, 1000 test-stream tasks) is at most 1.1x the source's (UCB1
learning from scratch on the same tasks). Dark Room: the return by episode 50 (mean of
episodes 46-55; 16 held-out goals x 8 rollouts) is at least 0.8x the mean optimum of the
same goals. Both criteria were fixed before the runs (the Dark Room one in the commit
that added the family, before its build); the default seed's figure is reported beside
it. Hand-built models are listed apart: they are not learned.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from ad.utils import atomic_write_text  # noqa: E402
from ad.zoo import WEIGHTS  # noqa: E402

BAR = 1.1  # bandits: regret at most BAR x the source's
RETURN_BAR = 0.8  # Dark Room: return by episode 50 at least RETURN_BAR x the optimum


def load_catalogue() -> tuple[dict, dict, dict]:
    cat = json.loads((WEIGHTS / "catalogue.json").read_text())
    hand = json.loads((WEIGHTS / "handbuilt.json").read_text())["entries"]
    return cat["entries"], cat.get("families", {}), hand


def frontier(entries: dict, families: dict) -> dict:
    """Per family: every configuration (small to large) with its seeds' held-out scores,
    the ratio (regret: to the source's; return: to the optimum) and whether it passes; and
    the smallest that passes (or None)."""
    out = {}
    for fam, info in sorted(families.items()):
        base = {k: v["mean"] for k, v in info["baselines"].items()}
        metric = info.get("metric", "regret")
        if metric == "regret":
            bar, ref = BAR * base["source"], base["source"]
            passes = lambda m: m <= bar  # noqa: E731
        else:
            bar, ref = RETURN_BAR * base["optimum"], base["optimum"]
            passes = lambda m: m >= bar  # noqa: E731
        rows = []
        for name, e in sorted(((n, e) for n, e in entries.items() if e["family"] == fam),
                              key=lambda ne: ne[1]["num_params"]):
            scores = np.array([h["mean"] for h in e["heldout"]])
            se = scores.std(ddof=1) / np.sqrt(len(scores))
            rows.append({"name": name, "num_params": e["num_params"],
                         "mlp_dim": e["mlp_dim"], "seed_score": scores.round(3).tolist(),
                         "mean_score": float(scores.mean()), "ci_over_seeds": float(1.96 * se),
                         "seeds_passing": int(sum(passes(x) for x in scores)),
                         "default_seed": e["best_seed"],
                         "default_score": e["heldout"][e["best_seed"]]["mean"],
                         "ratio": float(scores.mean() / ref),
                         "passes": bool(passes(scores.mean()))})
        passing = [r for r in rows if r["passes"]]
        out[fam] = {"metric": metric, "source": base["source"], "random": base["random"],
                    "optimum": base["optimum"], "bar": bar, "rows": rows,
                    "train_steps": info.get("num_steps"), "batch_size": info.get("batch_size"),
                    "smallest": min(passing, key=lambda r: r["num_params"]) if passing else None}
    return out


def _words(f: dict) -> dict:
    if f["metric"] == "regret":
        return {"score": "regret", "axis": "held-out regret, 100 pulls",
                "ratio": "ratio to source",
                "bar": f"mean ≤ {BAR}× the source's"}
    return {"score": "return by ep 50", "axis": "held-out return by episode 50",
            "ratio": "fraction of optimum", "bar": f"mean ≥ {RETURN_BAR}× the optimum"}


def catalogue_markdown(front: dict, hand: dict) -> str:
    lines = ["# Zoo catalogue", "",
             "Written by `python -m experiments.zoo` from `ad/zoo/weights/catalogue.json`. "
             "Five seeds per configuration: mean over seeds ± 95% interval over seeds. "
             "Bandits: held-out pseudo-regret over 100 pulls on 1000 test-stream tasks (lower "
             "is better). Dark Room: held-out return by episode 50 (episodes 46–55) on the 16 "
             "held-out goals × 8 rollouts (higher is better).", ""]
    for fam, f in front.items():
        w = _words(f)
        lines += [f"## {fam}", "",
                  f"Source {f['source']:.2f}, random {f['random']:.2f}, optimum "
                  f"{f['optimum']:.2f}; *passes*: {w['bar']} ({f['bar']:.2f}). Training: "
                  f"{f['train_steps']} steps × {f['batch_size']} windows per seed.", "",
                  f"| configuration | params | {w['score']} (5 seeds) | seeds passing | "
                  f"default seed | {w['ratio']} | passes |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in f["rows"]:
            lines.append(f"| {r['name']} | {r['num_params']} | {r['mean_score']:.2f} ± "
                         f"{r['ci_over_seeds']:.2f} | {r['seeds_passing']} of "
                         f"{len(r['seed_score'])} | {r['default_seed']}: "
                         f"{r['default_score']:.2f} | {r['ratio']:.2f} | "
                         f"{'yes' if r['passes'] else 'no'} |")
        s = f["smallest"]
        lines += ["", f"Smallest passing: {s['name']} ({s['num_params']} parameters, "
                      f"{w['score']} {s['mean_score']:.2f})." if s else
                  "Smallest passing: none of the catalogued configurations.", ""]
    lines += ["## Hand-built references", "",
              "| model | params | closed-loop regret | NumPy algorithm, same tasks |",
              "| --- | --- | --- | --- |"]
    for name, e in sorted(hand.items()):
        h, a = e["heldout"][0], e["algorithm_regret"]
        lines.append(f"| {name} | {e['num_params']} | {h['mean']:.2f} ± {h['ci']:.2f} | "
                     f"{a['mean']:.2f} ± {a['ci']:.2f} |")
    return "\n".join(lines) + "\n"


def _grid(n: int, cols: int = 2):
    """A figure with one panel per family, at most ``cols`` per row (spare panels hidden)."""
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, min(n, cols), figsize=(5 * min(n, cols), 4 * rows),
                             squeeze=False)
    axes = axes.ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def plot_catalogue(front: dict, hand: dict, path: Path) -> None:
    """Held-out score vs parameter count, every seed, per family."""
    fams = list(front)
    fig, axes = _grid(len(fams))
    for ax, fam in zip(axes, fams):
        f, w = front[fam], _words(front[fam])
        for r in f["rows"]:
            style = dict(color="tab:blue" if r["mlp_dim"] else "tab:green")
            ax.scatter([r["num_params"]] * len(r["seed_score"]), r["seed_score"], s=12,
                       alpha=0.6, **style)
            ax.scatter([r["num_params"]], [r["mean_score"]], marker="_", s=200, **style)
        ax.axhline(f["source"], color="tab:orange", label="source")
        ax.axhline(f["bar"], color="tab:orange", ls=":", label=w["bar"])
        ax.axhline(f["random"], color="gray", ls="--", label="random")
        if f["metric"] == "return":
            ax.axhline(f["optimum"], color="black", ls="--", lw=0.8, label="optimum")
        for name, e in hand.items():
            if name.startswith(fam + "-"):
                ax.scatter([e["num_params"]], [e["heldout"][0]["mean"]], marker="*",
                           s=120, color="black")
                ax.annotate(e["algorithm"], (e["num_params"], e["heldout"][0]["mean"]),
                            fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.scatter([], [], color="tab:green", s=12, label="attention-only (seeds)")
        ax.scatter([], [], color="tab:blue", s=12, label="with MLP (seeds)")
        if any(name.startswith(fam + "-") for name in hand):
            ax.scatter([], [], color="black", marker="*", label="hand-built")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no overlapping labels
        ax.set_xlabel("parameters")
        ax.set_ylabel(w["axis"])
        ax.set_title(fam)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_training(entries: dict, front: dict, path: Path) -> None:
    """Held-out score (the per-checkpoint subset of held-out tasks) vs training step,
    every seed."""
    fams = sorted(front)
    fig, axes = _grid(len(fams))
    cmap = plt.get_cmap("viridis")
    for ax, fam in zip(axes, fams):
        rows = sorted(((n, e) for n, e in entries.items() if e["family"] == fam),
                      key=lambda ne: ne[1]["num_params"])
        for i, (name, e) in enumerate(rows):
            color = cmap(i / max(1, len(rows) - 1))
            steps = np.maximum(np.asarray(e["steps"]), 0.5)  # step 0 drawn at 0.5 (log axis)
            for s, curve in enumerate(e["curve"]):
                ax.plot(steps, curve, color=color, alpha=0.5, lw=1,
                        label=f"{name.split('/')[1]} ({e['num_params']})" if s == 0 else None)
        ax.axhline(front[fam]["source"], color="tab:orange", label="source")
        ax.set_xscale("log")
        ax.set_xlabel("training step (0 drawn at 0.5)")
        ax.set_ylabel(_words(front[fam])["axis"])
        ax.set_title(fam)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_times(build_dir: Path) -> dict:
    """Wall seconds per built configuration, from its files' times: the first checkpoint's
    directory (written right after the five seeds are initialised) to ``result.json``
    (after evaluation); training alone is ``train_wall_s`` in the catalogue."""
    out = {}
    for result in sorted(Path(build_dir).glob("runs/*/*/result.json")):
        first = result.parent / "seed0" / "step_00000"
        if first.exists():
            out[f"{result.parent.parent.name}/{result.parent.name}"] = \
                result.stat().st_mtime - first.stat().st_mtime
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.zoo",
        description="Catalogue table, frontier (smallest configuration whose mean held-out "
                    f"score over five seeds meets its family's bar: bandits regret <= {BAR}x "
                    f"the source's, Dark Room return by episode 50 >= {RETURN_BAR}x the "
                    "optimum) and figures of the model zoo, from the shipped catalogue "
                    "(nothing is retrained).")
    parser.add_argument("--out", type=Path, default=Path("docs/zoo"),
                        help="folder for catalogue.md, catalogue.png, training.png, "
                             "frontier.json (default docs/zoo)")
    parser.add_argument("--build-dir", type=Path, default=None,
                        help="also print each configuration's build wall time (train + "
                             "evaluate) from the files ad.zoo.build wrote there (its --out)")
    args = parser.parse_args(argv)
    entries, families, hand = load_catalogue()
    front = frontier(entries, families)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "catalogue.md", catalogue_markdown(front, hand))
    atomic_write_text(args.out / "frontier.json", json.dumps(front, indent=1))
    plot_catalogue(front, hand, args.out / "catalogue.png")
    plot_training(entries, front, args.out / "training.png")
    for fam, f in front.items():
        s, w = f["smallest"], _words(f)
        print(f"{fam}: {len(f['rows'])} configurations; source {w['score']} "
              f"{f['source']:.2f}, bar {f['bar']:.2f}; "
              + (f"smallest passing {s['name']} ({s['num_params']} params, {w['score']} "
                 f"{s['mean_score']:.2f})" if s else "none passes the bar"))
    print(f"wrote {args.out}/catalogue.md, catalogue.png, training.png, frontier.json")
    if args.build_dir is not None:
        times = {k: v for k, v in build_times(args.build_dir).items() if k in entries}
        for name, sec in times.items():
            print(f"  {name}: built in {sec / 60:.1f} min (training {entries[name]['train_wall_s'] / 60:.1f})")
        print(f"shipped configurations: built in {sum(times.values()) / 60:.0f} min in all "
              f"(a shared 2-core machine; plus ~15 s of collection per family)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
