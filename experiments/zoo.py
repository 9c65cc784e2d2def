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
    """Per family: every configuration (small to large) with its seeds' regret, the ratio
    to the source and whether it passes; and the smallest that passes (or None)."""
    out = {}
    for fam, info in sorted(families.items()):
        src = info["baselines"]["source"]["mean"]
        rows = []
        for name, e in sorted(((n, e) for n, e in entries.items() if e["family"] == fam),
                              key=lambda ne: ne[1]["num_params"]):
            regrets = np.array([h["mean"] for h in e["heldout_regret"]])
            se = regrets.std(ddof=1) / np.sqrt(len(regrets))
            rows.append({"name": name, "num_params": e["num_params"],
                         "mlp_dim": e["mlp_dim"], "seed_regret": regrets.round(3).tolist(),
                         "mean_regret": float(regrets.mean()), "ci_over_seeds": float(1.96 * se),
                         "default_seed": e["best_seed"],
                         "default_regret": e["heldout_regret"][e["best_seed"]]["mean"],
                         "ratio": float(regrets.mean() / src),
                         "passes": bool(regrets.mean() <= BAR * src)})
        passing = [r for r in rows if r["passes"]]
        out[fam] = {"source_regret": src, "random_regret": info["baselines"]["random"]["mean"],
                    "bar": BAR * src, "rows": rows,
                    "smallest": min(passing, key=lambda r: r["num_params"]) if passing else None}
    return out


def catalogue_markdown(front: dict, hand: dict) -> str:
    lines = ["# Zoo catalogue", "",
             "Written by `python -m experiments.zoo` from `ad/zoo/weights/catalogue.json`. "
             "Held-out pseudo-regret over 100 pulls on 1000 test-stream tasks (lower is "
             "better), five seeds per configuration: mean over seeds ± 95% interval over "
             f"seeds; *passes*: mean ≤ {BAR}× the source's.", ""]
    for fam, f in front.items():
        lines += [f"## {fam}", "",
                  f"Source (UCB1) {f['source_regret']:.2f}, random {f['random_regret']:.2f}, "
                  f"optimum 0; bar {f['bar']:.2f}.", "",
                  "| configuration | params | regret (5 seeds) | default seed | ratio to source | passes |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in f["rows"]:
            lines.append(f"| {r['name']} | {r['num_params']} | {r['mean_regret']:.2f} ± "
                         f"{r['ci_over_seeds']:.2f} | {r['default_seed']}: "
                         f"{r['default_regret']:.2f} | {r['ratio']:.2f} | "
                         f"{'yes' if r['passes'] else 'no'} |")
        s = f["smallest"]
        lines += ["", f"Smallest passing: {s['name']} ({s['num_params']} parameters, regret "
                      f"{s['mean_regret']:.2f})." if s else
                  "Smallest passing: none of the catalogued configurations.", ""]
    lines += ["## Hand-built references", "",
              "| model | params | closed-loop regret | NumPy algorithm, same tasks |",
              "| --- | --- | --- | --- |"]
    for name, e in sorted(hand.items()):
        h, a = e["heldout_regret"][0], e["algorithm_regret"]
        lines.append(f"| {name} | {e['num_params']} | {h['mean']:.2f} ± {h['ci']:.2f} | "
                     f"{a['mean']:.2f} ± {a['ci']:.2f} |")
    return "\n".join(lines) + "\n"


def plot_catalogue(front: dict, hand: dict, path: Path) -> None:
    """Held-out regret vs parameter count, every seed, per family."""
    fams = list(front)
    fig, axes = plt.subplots(1, len(fams), figsize=(5.5 * len(fams), 4), squeeze=False)
    for ax, fam in zip(axes[0], fams):
        f = front[fam]
        for r in f["rows"]:
            style = dict(color="tab:blue" if r["mlp_dim"] else "tab:green")
            ax.scatter([r["num_params"]] * len(r["seed_regret"]), r["seed_regret"], s=12,
                       alpha=0.6, **style)
            ax.scatter([r["num_params"]], [r["mean_regret"]], marker="_", s=200, **style)
        ax.axhline(f["source_regret"], color="tab:orange", label="source (UCB1)")
        ax.axhline(f["bar"], color="tab:orange", ls=":", label=f"{BAR}x source")
        ax.axhline(f["random_regret"], color="gray", ls="--", label="random")
        for name, e in hand.items():
            if name.startswith(fam + "-"):
                ax.scatter([e["num_params"]], [e["heldout_regret"][0]["mean"]], marker="*",
                           s=120, color="black")
                ax.annotate(e["algorithm"], (e["num_params"], e["heldout_regret"][0]["mean"]),
                            fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.scatter([], [], color="tab:green", s=12, label="attention-only (seeds)")
        ax.scatter([], [], color="tab:blue", s=12, label="with MLP (seeds)")
        ax.scatter([], [], color="black", marker="*", label="hand-built")
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel("held-out regret, 100 pulls")
        ax.set_title(fam)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_training(entries: dict, families: dict, path: Path) -> None:
    """Held-out regret (first 200 held-out tasks) vs training step, every seed."""
    fams = sorted(families)
    fig, axes = plt.subplots(1, len(fams), figsize=(5.5 * len(fams), 4), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, fam in zip(axes[0], fams):
        rows = sorted(((n, e) for n, e in entries.items() if e["family"] == fam),
                      key=lambda ne: ne[1]["num_params"])
        for i, (name, e) in enumerate(rows):
            color = cmap(i / max(1, len(rows) - 1))
            steps = np.maximum(np.asarray(e["steps"]), 0.5)  # step 0 drawn at 0.5 (log axis)
            for s, curve in enumerate(e["curve_regret"]):
                ax.plot(steps, curve, color=color, alpha=0.5, lw=1,
                        label=f"{name.split('/')[1]} ({e['num_params']})" if s == 0 else None)
        ax.axhline(families[fam]["baselines"]["source"]["mean"], color="tab:orange",
                   label="source (UCB1)")
        ax.set_xscale("log")
        ax.set_xlabel("training step (0 drawn at 0.5)")
        ax.set_ylabel("held-out regret, 100 pulls")
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
        description="Catalogue table, frontier (smallest configuration with held-out regret "
                    f"<= {BAR}x the source's, mean of five seeds) and figures of the model "
                    "zoo, from the shipped catalogue (nothing is retrained).")
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
    plot_training(entries, families, args.out / "training.png")
    for fam, f in front.items():
        s = f["smallest"]
        print(f"{fam}: {len(f['rows'])} configurations; source regret {f['source_regret']:.2f}; "
              + (f"smallest passing {s['name']} ({s['num_params']} params, regret "
                 f"{s['mean_regret']:.2f})" if s else "none passes the bar"))
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
