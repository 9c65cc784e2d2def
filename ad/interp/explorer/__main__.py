"""Start the explorer: ``python -m ad.interp.explorer [--runs DIR] [--model RUN_DIR] [--port N]``.

It serves on 127.0.0.1 only and prints the address. The page lists every finished model
under ``--runs`` (default ``runs/``) and ``--model``; with none found it first trains a
tiny bandit model (UCB1 histories, a small transformer: about a minute on 2 CPU cores)
into ``<runs>/explorer-tiny/`` and opens on it (rerunning reuses it).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from ad.interp.explorer import engine


@dataclasses.dataclass(frozen=True)
class ExplorerConfig:
    """What ``python -m ad.interp.explorer`` serves."""

    runs: str = "runs"  # folder searched (recursively) for <run>/model/config.json
    model: str = ""  # a run directory to open first (default: the first one found)
    host: str = "127.0.0.1"  # local only: the explorer has no authentication
    port: int = 8765  # 0 picks a free port
    train_tiny: bool = True  # with no model found, train the tiny one first

    def __post_init__(self):
        if not 0 <= self.port < 65536:
            raise ValueError(f"ExplorerConfig.port must lie in [0, 65536), got {self.port}")
        if self.model and not (Path(self.model) / "model" / "config.json").exists():
            raise ValueError(f"--model {self.model}: no finished model there "
                             f"({Path(self.model) / 'model' / 'config.json'} is missing)")


# The tiny model: a 5-armed bandit distilled from UCB1, small enough to train in about a
# minute on 2 CPU cores; its in-context learning is weak but visible.
TINY_SETTING = dict(env="bernoulli-bandit", source="ucb", histories=512, num_steps=100,
                    distill=dict(context=50, window=100, d_model=32, num_layers=2,
                                 num_heads=2, mlp_dim=64, dropout=0.0, batch_size=32,
                                 num_steps=400, lr=3e-3, warmup_steps=40))


def train_tiny(runs: str | Path, quiet: bool = False) -> Path:
    """Collect UCB1 histories and distill the tiny model under ``<runs>/explorer-tiny``
    (``experiments.collect`` + ``ad.train.distill``; both resume / reuse what exists)."""
    from ad.train import DistillConfig, distill
    from experiments.collect import CollectConfig, collect

    root = Path(runs) / "explorer-tiny"
    run_dir = root / "ad-seed0"
    if (run_dir / "model" / "config.json").exists():
        return run_dir
    t0 = time.time()
    data = collect(CollectConfig(out=root / "data", env=TINY_SETTING["env"],
                                 source=TINY_SETTING["source"],
                                 source_overrides={"num_steps": TINY_SETTING["num_steps"]},
                                 num_histories=TINY_SETTING["histories"], verbose=not quiet))
    config = DistillConfig.from_dict({**TINY_SETTING["distill"], "dataset": str(data),
                                      "out": str(run_dir), "progress": not quiet})
    distill(config)
    if not quiet:
        print(f"trained the tiny model in {time.time() - t0:.0f} s: {run_dir}")
    return run_dir


def parse_args(argv=None) -> ExplorerConfig:
    p = argparse.ArgumentParser(
        prog="python -m ad.interp.explorer",
        description="A local web app to watch an AD model learn in context on a held-out "
                    "task, edit its context (rewards, goal, episodes, drawn trajectories) and "
                    "look inside it (attention, logit lens, DLA, ablations, patching), "
                    "beside its source or a reference agent. Serves on 127.0.0.1 only.",
        epilog="examples:\n  python -m ad.interp.explorer\n"
               "  python -m ad.interp.explorer --model runs/darkroom/ad-seed0 --port 8000\n"
               "With no model found it trains a tiny bandit model first (about a minute on "
               "2 CPU cores). Guide: docs/explorer.md",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs", help="folder searched for trained models "
                   "(<run>/model/config.json, any depth); default: runs/")
    p.add_argument("--model", default="", help="a run directory to open first")
    p.add_argument("--port", type=int, default=8765, help="port (0: a free one); default 8765")
    p.add_argument("--no-train", action="store_true",
                   help="with no model found, stop instead of training the tiny one")
    a = p.parse_args(argv)
    return ExplorerConfig(runs=a.runs, model=a.model, port=a.port, train_tiny=not a.no_train)


def main(argv=None) -> int:
    try:
        config = parse_args(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import uvicorn

    from ad.interp.explorer.app import Explorer, make_app

    default = config.model or None
    if default is None:
        found = engine.discover(config.runs)
        if found:
            default = found[0].id
        elif config.train_tiny:
            print(f"no trained model under {config.runs}/: training a tiny bandit model "
                  f"first (about a minute)")
            default = str(train_tiny(config.runs))
        else:
            print(f"error: no trained model under {config.runs}/ (--runs DIR or --model "
                  f"RUN_DIR)", file=sys.stderr)
            return 2
    app = make_app(Explorer([config.runs], default))
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port,
                                           log_level="warning"))

    async def announce():  # print the address once the socket is bound (port 0 too)
        import asyncio

        while not server.started and not server.should_exit:
            await asyncio.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        print(f"AD explorer on http://{config.host}:{port}/  (model: {default}; Ctrl-C "
              f"stops it)", flush=True)

    import asyncio

    async def serve():
        await asyncio.gather(server.serve(), announce())

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
