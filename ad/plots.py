"""Learning-curve plots of in-context evaluations (matplotlib, written to PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STYLE = {
    "AD": dict(color="tab:blue", lw=2.0),
    "ED": dict(color="tab:purple", lw=1.5),
    "source": dict(color="tab:orange", lw=1.5),
    "random": dict(color="tab:gray", lw=1.0, ls="--"),
    "optimal": dict(color="black", lw=1.0, ls=":"),
}


def plot_curves(panels: dict[str, dict[str, dict]], path: str | Path, title: str,
                ylabel: str = "return per episode", xlabel: str = "episode") -> Path:
    """One panel per split; each curve is ``{"mean": [...], "ci": [...]}`` (optionally a
    ``"style"`` dict of matplotlib line options).

    ``panels = {"held-out tasks": {"AD": {...}, "source": {...}}, "training tasks": ...}``;
    the 95% confidence band is drawn where ``ci`` is given.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (panel, curves) in zip(axes[0], panels.items()):
        for label, curve in curves.items():
            mean = np.asarray(curve["mean"], float)
            x = np.arange(1, len(mean) + 1)
            # colour by method (the label's first word); a curve may override, e.g. ls="--"
            style = {**STYLE.get(label.split(" ")[0], {}), **curve.get("style", {})}
            ax.plot(x, mean, label=label, **style)
            if curve.get("ci") is not None:
                ci = np.asarray(curve["ci"], float)
                ax.fill_between(x, mean - ci, mean + ci, alpha=0.2, color=style.get("color"))
        ax.set_title(panel)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as PNG atomically (a reader never sees half a file), close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
