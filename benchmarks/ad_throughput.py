"""Throughput of the AD transformer: training env-steps/s and KV-cache vs recompute decoding.

(a) Training: one full jitted train step (forward + backward + AdamW, fp32) on a batch of
    windows; env-steps/s = batch * window / seconds (= tokens/s for the "step" layout).
    The FLOPs of the compiled step (XLA cost analysis) over its time, against a 2048^3
    fp32 matmul timed in the same run, gives the % of matmul peak. It is the step
    ``ad.train.distill`` runs: data parallel over all devices. On a CPU the rows are
    measured with the host split into 1 and 2 devices (``--cpu-devices``; one child
    process each, back to back): a model this small leaves cores idle inside one
    device's step, while n devices each run their shard of the batch on their own thread.
(b) Evaluation: env-steps/s of ``decode_step`` (rolling KV cache) vs ``recompute_step``
    (full forward over the last c steps at every step), both as a jitted lax.scan over
    steps of a batch of streams, with a fresh random step input per step.

Allocator: XLA's CPU runtime mallocs one large temporary buffer per step (>100 MB here);
glibc serves it by mmap/munmap, so every step page-faults it in again (~39k minor faults,
~30% of the step as system time). ``glibc.malloc.hugetlb=1`` makes glibc back such chunks
with transparent huge pages (faults drop ~80x); the script re-executes itself with it
set unless ``--no-hugepage-malloc`` (training entry points should set it the same way).

Both wall-clock and process-CPU-time figures are printed: on a shared machine the wall
figures depend on other load; CPU time / cores is a less noisy estimate of what the same
machine would do unloaded. Writes a table to stdout and JSON to --out.

    .venv/bin/python benchmarks/ad_throughput.py            # ~3-6 min on 2 shared cores
    .venv/bin/python benchmarks/ad_throughput.py --help
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ad.config import ModelConfig  # noqa: E402
from ad.inputs import StepInputs, stream_inputs  # noqa: E402
from ad.model import (  # noqa: E402
    ADTransformer,
    decode_step,
    init_cache,
    init_params,
    init_recompute_buffer,
    recompute_step,
)
from ad.train import data_parallel_train_step  # noqa: E402
from ad.train_step import Batch, init_train_state, make_optimizer  # noqa: E402
from ad.utils import reexec_with_hugepage_malloc  # noqa: E402

NUM_ACTIONS, SIZE = 5, 9  # Dark Room shapes


def timeit(fn, iters: int, repeats: int):
    """Best-of-``repeats`` (wall, cpu) seconds per call of ``fn`` (which blocks)."""
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(iters):
            fn()
        walls.append((time.perf_counter() - w0) / iters)
        cpus.append((time.process_time() - c0) / iters)
    return min(walls), min(cpus)


def matmul_peak(repeats: int) -> dict:
    a = jnp.ones((2048, 2048), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    wall, cpu = timeit(lambda: f(a).block_until_ready(), 1, repeats)
    flops = 2 * 2048**3
    return {"gflops_wall": flops / wall / 1e9, "gflops_cpu_per_core": flops / cpu / 1e9}


def random_batch(rng, cfg: ModelConfig, B, T) -> Batch:
    obs = rng.integers(0, SIZE, (B, T, 2)).astype(np.int32)
    action = rng.integers(0, NUM_ACTIONS, (B, T)).astype(np.int32)
    reward = (rng.random((B, T)) < 0.3).astype(np.float32)
    done = np.zeros((B, T), bool)
    inputs = stream_inputs(obs, action, reward, done, cfg)
    return Batch(inputs=inputs, target_action=jnp.asarray(action),
                 mask=jnp.ones((B, T), jnp.float32))


def bench_train(cfg: ModelConfig, B: int, T: int, iters: int, repeats: int, cores: int):
    """The train step of ad.train.distill: data-parallel over all jax.devices()."""
    opt = make_optimizer(3e-4, 100, 10_000)
    parallel = data_parallel_train_step(ADTransformer(cfg), opt)
    batch = jax.device_put(random_batch(np.random.default_rng(0), cfg, B, T), parallel.data_sharded)
    state = jax.device_put(
        init_train_state(init_params(cfg, jax.random.key(0)), opt, jax.random.key(1)),
        parallel.replicated)
    step = parallel.step
    compiled = step.lower(state, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    # SPMD cost analysis counts one device's shard: the whole step is n times that
    flops = float(cost.get("flops", float("nan"))) * len(jax.devices())
    holder = [state]

    def run():
        holder[0], metrics = step(holder[0], batch)
        jax.block_until_ready(metrics["loss"])

    run()
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    wall, cpu = timeit(run, iters, repeats)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / (iters * repeats)
    return {"minor_faults_per_step": faults,
            "ms_per_step_wall": wall * 1e3, "ms_per_step_cpu": cpu * 1e3,
            "env_steps_per_s_wall": B * T / wall,
            "env_steps_per_s_cpu_est": B * T / (cpu / cores),
            "gflop_per_step": flops / 1e9,
            "gflops_wall": flops / wall / 1e9, "gflops_cpu_per_core": flops / cpu / 1e9}


def bench_decode(cfg: ModelConfig, B: int, steps: int, recompute_steps: int, repeats: int,
                 cores: int):
    params = init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(1)

    def stream(n):  # time-major random step inputs (B per step)
        obs = rng.integers(0, SIZE, (n, B, 2)).astype(np.int32)
        act = rng.integers(0, NUM_ACTIONS + 1, (n, B)).astype(np.int32)
        rew = (rng.random((n, B)) < 0.3).astype(np.float32)
        return StepInputs(obs[:, :, None], act[:, :, None], rew[:, :, None])

    @jax.jit
    def kv_run(cache, xs):
        def body(c, s):
            logits, c = decode_step(params, cfg, c, s)
            return c, logits[:, 0]
        return jax.lax.scan(body, cache, xs)

    @jax.jit
    def re_run(buf, xs):
        def body(b, s):
            logits, b = recompute_step(params, cfg, b, s)
            return b, logits[:, 0]
        return jax.lax.scan(body, buf, xs)

    xs_kv, xs_re = stream(steps), stream(recompute_steps)
    # Start from full caches/buffers (steady state: every step sees c earlier steps).
    cache, _ = kv_run(init_cache(cfg, B), stream(cfg.context))
    buf, _ = re_run(init_recompute_buffer(cfg, B), stream(cfg.context))
    jax.block_until_ready((kv_run(cache, xs_kv), re_run(buf, xs_re)))
    kv_wall, kv_cpu = timeit(lambda: jax.block_until_ready(kv_run(cache, xs_kv)), 1, repeats)
    re_wall, re_cpu = timeit(lambda: jax.block_until_ready(re_run(buf, xs_re)), 1, repeats)
    out = {}
    for name, wall, cpu, n in (("kv_cache", kv_wall, kv_cpu, steps),
                               ("recompute", re_wall, re_cpu, recompute_steps)):
        out[name] = {"env_steps_per_s_wall": B * n / wall,
                     "env_steps_per_s_cpu_est": B * n / (cpu / cores),
                     "ms_per_step_wall": wall / n * 1e3}
    out["speedup_wall"] = (out["kv_cache"]["env_steps_per_s_wall"]
                           / out["recompute"]["env_steps_per_s_wall"])
    return out


def provenance() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    except OSError:
        commit = None
    import flax
    import optax
    return {"git_commit": commit, "jax": jax.__version__, "flax": flax.__version__,
            "optax": optax.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}


def train_table(args, base: dict, cores: int) -> dict:
    """The training rows on the devices this process has."""
    cfgs = {
        "step, no dropout": ModelConfig(**base, num_layers=args.layers, context=args.context,
                                        dropout=0.0),
        "step, dropout .1/.5, mask .3": ModelConfig(
            **base, num_layers=args.layers, context=args.context, dropout=0.1,
            attn_dropout=0.5, token_mask_prob=0.3),
        "oar, no dropout": ModelConfig(**base, num_layers=args.layers, context=args.context,
                                       dropout=0.0, token_layout="oar"),
    }
    rows = {}
    for name, cfg in cfgs.items():
        r = bench_train(cfg, args.batch, args.window, args.iters, args.repeats, cores)
        r["config"] = dataclasses.asdict(cfg)
        r["devices"] = len(jax.devices())
        rows[name] = r
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="results/ad_throughput.json", help="JSON output path")
    p.add_argument("--batch", type=int, default=128, help="training windows per batch")
    p.add_argument("--window", type=int, default=60, help="training window T (steps)")
    p.add_argument("--context", type=int, default=20, help="band c (steps) for training")
    p.add_argument("--layers", type=int, default=2, help="layers for the training benchmark")
    p.add_argument("--iters", type=int, default=5, help="train steps per timing repeat")
    p.add_argument("--repeats", type=int, default=3, help="timing repeats (best is kept)")
    p.add_argument("--eval-context", type=int, default=200, help="band c for decoding")
    p.add_argument("--eval-layers", type=int, default=4, help="layers for decoding")
    p.add_argument("--eval-batch", type=int, default=64, help="streams decoded in parallel")
    p.add_argument("--eval-steps", type=int, default=400, help="KV-cache steps per timing")
    p.add_argument("--recompute-steps", type=int, default=20,
                   help="recompute steps per timing")
    p.add_argument("--cpu-devices", type=int, nargs="+", default=[1, 2],
                   help="on a CPU, time training with the host split into each of these "
                        "numbers of devices (data parallel, one process each)")
    p.add_argument("--child-devices", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--skip-eval", action="store_true", help="only the training benchmark")
    p.add_argument("--no-hugepage-malloc", action="store_true",
                   help="do not re-execute with GLIBC_TUNABLES=glibc.malloc.hugetlb=1")
    args = p.parse_args(argv)
    if not args.no_hugepage_malloc and argv is None:
        reexec_with_hugepage_malloc()
    cores = os.cpu_count() or 1

    base = dict(num_actions=NUM_ACTIONS, obs_shape=(2,), obs_num_values=SIZE, d_model=64,
                num_heads=4, mlp_dim=256)
    if args.child_devices:  # one row group of the training table, in a fresh process
        jax.config.update("jax_num_cpu_devices", args.child_devices)
        Path(args.out).write_text(json.dumps(train_table(args, base, cores)))
        return
    results = {"provenance": provenance(), "args": vars(args), "train": {}, "eval": None,
               "note": "wall figures depend on other load on the machine (loadavg_at_start); "
                       "*_cpu_est = work / (process CPU time / cores)"}
    peak = matmul_peak(args.repeats)
    results["matmul_2048"] = peak
    print(f"fp32 matmul 2048^3: {peak['gflops_wall']:.0f} GFLOP/s wall, "
          f"{peak['gflops_cpu_per_core']:.0f} GFLOP/s per core of CPU time")
    print(f"\n(a) training: batch {args.batch} x {args.window} steps, c={args.context}, "
          f"d=64, {args.layers} layers, 4 heads, MLP 256, fp32, full data-parallel train step")
    print(f"{'model':40s} {'ms wall':>8s} {'env-steps/s wall':>17s} {'cpu-est':>10s} "
          f"{'GFLOP':>6s} {'% peak':>7s} {'faults':>7s}")
    if jax.default_backend() == "cpu":
        # The host split into n devices needs a fresh process per n (set before the
        # backend starts); the rows are still measured in one run, back to back.
        groups = {}
        for n in args.cpu_devices:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "train.json"
                # the child parses this run's own flags (so a new flag needs no forwarding);
                # the later --child-devices/--out win over any earlier ones
                cmd = [sys.executable, __file__, *(sys.argv[1:] if argv is None else argv),
                       "--child-devices", str(n), "--out", str(out)]
                subprocess.run(cmd, check=True)
                groups[n] = json.loads(out.read_text())
    else:
        groups = {len(jax.devices()): train_table(args, base, cores)}
    for n, rows in groups.items():
        for name, r in rows.items():
            label = f"{name} [{n} device{'s' if n > 1 else ''}]"
            r["pct_matmul_peak"] = 100 * r["gflops_cpu_per_core"] / peak["gflops_cpu_per_core"]
            results["train"][label] = r
            print(f"{label:40s} {r['ms_per_step_wall']:8.1f} {r['env_steps_per_s_wall']:17,.0f} "
                  f"{r['env_steps_per_s_cpu_est']:10,.0f} {r['gflop_per_step']:6.2f} "
                  f"{r['pct_matmul_peak']:6.1f}% {r['minor_faults_per_step']:7.0f}")
    if len(groups) > 1:
        lo, hi = min(groups), max(groups)
        name = "step, no dropout"
        ratio = (groups[hi][name]["env_steps_per_s_wall"]
                 / groups[lo][name]["env_steps_per_s_wall"])
        results["data_parallel_speedup"] = {"devices": [lo, hi], "model": name,
                                            "ratio_wall": ratio}
        print(f"{name}: {hi} host devices / {lo}: {ratio:.2f}x")

    if not args.skip_eval:
        cfg = ModelConfig(**base, num_layers=args.eval_layers, context=args.eval_context,
                          dropout=0.0)
        r = bench_decode(cfg, args.eval_batch, args.eval_steps, args.recompute_steps,
                         args.repeats, cores)
        r["config"] = dataclasses.asdict(cfg)
        results["eval"] = r
        print(f"\n(b) evaluation: {args.eval_batch} streams, c={args.eval_context}, "
              f"d=64, {args.eval_layers} layers, MLP 256")
        print(f"{'method':12s} {'env-steps/s wall':>17s} {'cpu-est':>10s} {'ms/step':>8s}")
        for name in ("kv_cache", "recompute"):
            x = r[name]
            print(f"{name:12s} {x['env_steps_per_s_wall']:17,.0f} "
                  f"{x['env_steps_per_s_cpu_est']:10,.0f} {x['ms_per_step_wall']:8.2f}")
        print(f"KV cache speed-up over recompute: {r['speedup_wall']:.1f}x")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str))
    tmp.replace(out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
