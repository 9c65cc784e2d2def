"""What the integrity checks cost on a Dark Room pipeline (issue 26), measured piece by piece.

    python -m tests.integrity.cost DATASET [--steps 200]

DATASET is a collected Dark Room dataset (``experiments.run darkroom`` writes
``data/darkroom``: 1040 PPO histories). Prints the seconds each check adds: verifying
the dataset (checksums and values, once per process), the non-finite guard in the
jitted train step (timed against the unguarded step on the setting's model), checksummed
checkpoints and the verified model load, and the total for a run of the setting's
length (2000 steps, a checkpoint every 500).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tests.integrity.cost")
    p.add_argument("dataset")
    p.add_argument("--steps", type=int, default=200, help="train steps timed per variant")
    args = p.parse_args()
    warnings.simplefilter("ignore")

    from ad.checkpoints import load_model, save_checkpoint, save_model
    from ad.config import ModelConfig
    from ad.dataset import load_dataset
    from ad.model import ADTransformer, init_params
    from ad.train import DistillConfig, data_parallel_train_step
    from ad.train_step import init_train_state, make_optimizer
    from ad.windows import WindowSampler
    from experiments.settings import get_setting

    t = time.perf_counter()
    ds = load_dataset(args.dataset)
    t_open = time.perf_counter() - t
    t = time.perf_counter()
    ds.verify()
    t_hash = time.perf_counter() - t
    t = time.perf_counter()
    ds.check_values()
    t_values = time.perf_counter() - t
    print(f"dataset {ds.path}: {ds.nbytes / 2**20:.1f} MiB; open {t_open:.3f} s, checksums "
          f"{t_hash:.3f} s, value checks {t_values:.3f} s (once per process)")

    setting = get_setting("darkroom")
    cfg = DistillConfig.from_dict({**setting.distill, "dataset": args.dataset, "out": "x"})
    model_cfg = ModelConfig.for_env(ds.env, cfg.model)
    opt = make_optimizer(cfg.lr, cfg.warmup_steps, cfg.num_steps)
    parallel = data_parallel_train_step(ADTransformer(model_cfg), opt)
    sampler = WindowSampler(ds, model_cfg, cfg.window_steps, cfg.batch_size, 0)
    batches = [jax.device_put(sampler.batch(s), parallel.data_sharded) for s in range(8)]

    def fresh():
        params = init_params(model_cfg, jax.random.PRNGKey(0), cfg.window_steps)
        return jax.device_put(init_train_state(params, opt, jax.random.PRNGKey(1)),
                              parallel.replicated)

    def time_plain(n):
        state = fresh()
        state, m = parallel.step(state, batches[0])  # compile
        jax.block_until_ready(m)
        t = time.perf_counter()
        for s in range(n):
            state, m = parallel.step(state, batches[s % 8])
            if (s + 1) % cfg.log_every == 0:
                jax.device_get(m)
        jax.block_until_ready(state)
        return (time.perf_counter() - t) / n, state

    def time_guarded(n):
        state, bad = fresh(), jax.device_put(jnp.int32(-1), parallel.replicated)
        state, m, bad = parallel.guarded_step(state, batches[0], bad)
        jax.block_until_ready(m)
        t = time.perf_counter()
        for s in range(n):
            state, m, bad = parallel.guarded_step(state, batches[s % 8], bad)
            if (s + 1) % cfg.log_every == 0:
                jax.device_get((m, bad))
        jax.block_until_ready(state)
        return (time.perf_counter() - t) / n

    plain, guarded = [], []
    for r in range(4):  # interleaved, alternating which goes first: the machine's load drifts
        if r % 2:
            guarded.append(time_guarded(args.steps))
        dt, state = time_plain(args.steps)
        plain.append(dt)
        if not r % 2:
            guarded.append(time_guarded(args.steps))
    step_plain, step_guarded = min(plain), min(guarded)
    print(f"train step: {1e3 * step_plain:.1f} ms unguarded, {1e3 * step_guarded:.1f} ms with "
          f"the non-finite guard ({100 * (step_guarded / step_plain - 1):+.1f}%)")

    from flax import serialization

    from ad.utils import atomic_write_bytes

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        t = time.perf_counter()
        for _ in range(3):
            atomic_write_bytes(run / "plain.msgpack", serialization.to_bytes(jax.device_get(state)))
        t_plain_ckpt = (time.perf_counter() - t) / 3
        t = time.perf_counter()
        for k in range(3):
            save_checkpoint(run, state.replace(step=state.step + k))
        t_ckpt = (time.perf_counter() - t) / 3
        save_model(run, model_cfg, state.params, env="darkroom", env_overrides={})
        t = time.perf_counter()
        load_model(run)
        t_load = time.perf_counter() - t
    print(f"checkpoint: {t_plain_ckpt:.3f} s plain, {t_ckpt:.3f} s with sidecar and finite check; "
          f"verified load_model {t_load:.3f} s")
    n_ckpt = cfg.num_steps // cfg.checkpoint_every
    total = (t_hash + t_values + cfg.num_steps * max(step_guarded - step_plain, 0.0)
             + n_ckpt * max(t_ckpt - t_plain_ckpt, 0.0) + t_load)
    print(f"added to a darkroom run ({cfg.num_steps} steps of {1e3 * step_plain:.0f} ms = "
          f"{cfg.num_steps * step_plain:.0f} s, {n_ckpt} checkpoints): about {total:.1f} s "
          f"({100 * total / (cfg.num_steps * step_plain):.1f}%)")


if __name__ == "__main__":
    main()
