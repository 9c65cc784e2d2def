"""Throughput of an activation-patching sweep: ours (one jitted call) vs the
TransformerLens way (a patched forward compiled once, called per cell in a Python loop).

The sweep: every (layer × head × position) cell of ``attn.hook_z`` patched from a clean
into a corrupted context (the same stream with every reward flipped), normalised
logit-difference metric at the last step, on the Dark Room model's shape (2 layers,
4 heads, d = 64, c = 60), 120-step windows, 64 context pairs: 2 × 4 × 120 = 960 cells.

Rows, measured back to back in one process on the same inputs:
- ``loop``: TransformerLens's approach. One jitted function ``f(intervention) ->
  metric`` (the patch is a traced argument, so it compiles once); a Python loop calls it
  for every cell, and every call recomputes the whole forward from the inputs.
- ``exact``: ``patch_sweep(engine="exact")``: the same patched forwards as one jitted
  call, ``lax.map`` over chunks of vmapped interventions.
- ``fast``: ``patch_sweep(engine="fast")`` (the default for this grid): one jitted call
  that reuses the corrupted run's cached activations and computes only what the metric
  reads.
Every engine's values are checked against the loop's (max abs difference printed).
Compile time is excluded (one warm-up call each); the best of ``--repeats`` is kept.
Writes a table to stdout and JSON to ``--out``.

    .venv/bin/python -m benchmarks.patching_throughput        # ~1-2 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import envs  # noqa: E402
from ad import hooks  # noqa: E402
from ad.config import ArchConfig, ModelConfig  # noqa: E402
from ad.interp.patching import Metric, _reference, patch_sweep  # noqa: E402
from ad.model import init_params  # noqa: E402
from ad.inputs import stream_inputs  # noqa: E402


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="results/patching_throughput.json", help="JSON output")
    p.add_argument("--pairs", type=int, default=64, help="context pairs (batch)")
    p.add_argument("--window", type=int, default=120, help="steps per context")
    p.add_argument("--repeats", type=int, default=2, help="timing repeats (best kept)")
    p.add_argument("--chunk", type=int, default=16, help="cells per vmapped chunk")
    args = p.parse_args(argv)

    env = envs.make("darkroom")
    cfg = ModelConfig.for_env(env, ArchConfig(dropout=0.0))
    params = init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)  # random Dark Room-shaped streams: timing only
    B, T = args.pairs, args.window
    clean = stream_inputs(rng.integers(0, 9, (B, T, 2)), rng.integers(0, 5, (B, T)),
                          (rng.random((B, T)) < 0.3).astype(np.float32),
                          np.arange(T)[None].repeat(B, 0) % 20 == 19, cfg)
    corrupt = clean._replace(prev_reward=1.0 - clean.prev_reward)
    hook, L, H, N = "attn.hook_z", cfg.num_layers, cfg.num_heads, args.window
    names = [f"blocks.{l}.{hook}" for l in range(L)]
    print(f"sweep: {L} layers x {H} heads x {N} positions = {L * H * N} cells of {hook}, "
          f"{args.pairs} pairs, d={cfg.d_model}, c={cfg.context}; "
          f"{jax.device_count()} {jax.default_backend()} device(s)")

    # The TransformerLens way: one compiled patched forward, a Python loop over cells.
    cl_logits, cl = jax.jit(lambda p, i: hooks.run_with_hooks(p, cfg, i, capture=names))(
        params, clean)
    co_logits = jax.jit(lambda p, i: hooks.run_with_hooks(p, cfg, i))(params, corrupt)
    metric = Metric()
    ref = _reference(cl_logits[:, -1], co_logits[:, -1], metric)

    @jax.jit
    def patched(edits):
        return metric(hooks.run_with_hooks(params, cfg, corrupt, edits)[:, -1], ref)

    def cell_edits(l, h, pos):
        return {n: hooks.Intervention(
            where=hooks.where(n, cfg, heads=[h], positions=[pos], num_positions=N)
            & (i == l), scale=np.float32(0), value=cl[n]) for i, n in enumerate(names)}

    cells = [(l, h, pos) for l in range(L) for h in range(H) for pos in range(N)]
    edits = [cell_edits(*c) for c in cells]  # built before timing: only forwards are timed
    jax.block_until_ready(patched(edits[0]))

    def loop():
        return np.array([float(patched(e)) for e in edits])

    rows = {}
    loop_values = loop()
    rows["loop"] = _best(loop, args.repeats)
    for engine in ("exact", "fast"):
        def run(engine=engine):
            return patch_sweep(params, cfg, clean, corrupt, hook, "layer_head_pos",
                               engine=engine, chunk=args.chunk).values
        values = np.asarray(run())
        err = float(np.abs(values.reshape(-1) - loop_values).max())
        rows[engine] = _best(run, args.repeats)
        rows[engine + "_max_abs_diff"] = err

    print(f"\n| engine | seconds for {len(cells)} cells | cells/s | speed-up vs loop | "
          f"max |diff| vs loop |")
    print("| --- | --- | --- | --- | --- |")
    for engine in ("loop", "exact", "fast"):
        t = rows[engine]
        diff = rows.get(engine + "_max_abs_diff", 0.0)
        print(f"| {engine} | {t:.2f} | {len(cells) / t:.0f} | {rows['loop'] / t:.1f}x | "
              f"{diff:.1e} |")
    result = {"config": vars(args), "cells": len(cells), "seconds": rows,
              "speedup_fast": rows["loop"] / rows["fast"],
              "speedup_exact": rows["loop"] / rows["exact"],
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "backend": jax.default_backend(), "devices": jax.device_count()},
              "jax": jax.__version__}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
