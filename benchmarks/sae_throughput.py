"""SAE training throughput against SAELens, on the same activations, width, k and steps.

    python -m benchmarks.sae_throughput --stores data/sae/bandit \\
        --saelens-python /path/to/venv-saelens/bin/python

Trains a TopK SAE (width, k, batch, steps, learning rate and its final linear decay the
same on both sides) on one hook's training-store activations, scaled once to mean norm √d
and handed to both, with

* this project (``ad.interp.sae``: one jitted ``lax.scan``), one SAE, and a vmapped grid
  of ``--grid`` SAEs (different k, one call: the sweep's form);
* SAELens (``TopKTrainingSAE`` + its own ``SAETrainer`` and data-provider interface, CPU
  torch), run in the Python given by ``--saelens-python`` (torch and sae-lens are not
  project dependencies: without them this side is skipped, saying why).

Timed: the training call after compilation (JAX) / the whole ``fit`` (SAELens), in
activations per second. Then both SAEs encode the held-out store and the same function
here computes L0 and FVU ("equal quality": L0 within ±5% and FVU within ±0.01). Prints a
table and writes JSON (``--out``). Timings on a shared machine are noisy: the two sides
run back to back in one invocation, on the same cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SAELENS_SCRIPT = r"""
import json, sys, time, numpy as np, torch
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.config import SAETrainerConfig
from sae_lens.training.sae_trainer import SAETrainer
import sae_lens
a = json.loads(sys.argv[1])
x = torch.from_numpy(np.load(a["train"]))
xt = torch.from_numpy(np.load(a["test"]))
torch.manual_seed(0)
d = x.shape[1]
sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=a["width"], k=a["k"],
                                            normalize_activations="none", device="cpu"))
g = torch.Generator().manual_seed(0)
def provider():
    while True:
        yield x[torch.randint(0, len(x), (a["batch"],), generator=g)]
decay = int(a["steps"] * 0.2)
cfg = SAETrainerConfig(total_training_samples=a["steps"] * a["batch"],
                       train_batch_size_samples=a["batch"], lr=a["lr"], lr_end=0.0,
                       lr_decay_steps=decay, device="cpu",
                       dead_feature_window=max(a["dead_tokens"] // a["batch"], 1))
trainer = SAETrainer(cfg, sae, provider())
t = time.time()
trainer.fit()
seconds = time.time() - t
with torch.no_grad():
    z = torch.cat([sae.encode(xt[i:i + 8192]) for i in range(0, len(xt), 8192)])
    xh = torch.cat([sae.decode(z[i:i + 8192]) for i in range(0, len(z), 8192)])
np.save(a["z_out"], (z != 0).sum(-1).numpy())
np.save(a["xhat_out"], xh.numpy())
print(json.dumps({"seconds": seconds, "torch": torch.__version__,
                  "sae_lens": sae_lens.__version__, "threads": torch.get_num_threads()}))
"""


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stores", required=True, help="directory with train/ and test/ stores")
    p.add_argument("--hook", default="blocks.1.hook_resid_post")
    p.add_argument("--width-mult", type=int, default=8, help="width = mult · d_model")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--grid", type=int, default=5, help="SAEs in the vmapped grid run")
    p.add_argument("--saelens-python", default=None,
                   help="a Python with torch and sae-lens (skipped when absent)")
    p.add_argument("--out", default="docs/results/sae_throughput.json")
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from ad.interp.sae.metrics import fvu
    from ad.interp.sae.models import SAEConfig, Sparsity, Splice, init_params
    from ad.interp.sae.store import ActivationStore
    from ad.interp.sae.train import TrainConfig, input_scale, make_train
    from ad.utils import atomic_write_text, provenance

    flat = lambda a: np.ascontiguousarray(a.reshape(-1, a.shape[-1]), np.float32)  # noqa: E731
    x = flat(ActivationStore(Path(args.stores) / "train").activations(args.hook))
    xt = flat(ActivationStore(Path(args.stores) / "test").activations(args.hook))
    s = input_scale(x)
    x, xt = x * s, xt * s  # both sides see the same scaled data
    d = x.shape[1]
    width = args.width_mult * d
    cfg = SAEConfig(kind="topk", d_in=d, width=width, k_max=args.k)
    tcfg = TrainConfig(steps=args.steps, batch_size=args.batch, lr=args.lr)
    train = make_train(cfg, tcfg)
    data = jnp.asarray(x)
    key = jax.random.key(0)
    results = {"config": vars(args), "positions_train": len(x), "positions_test": len(xt),
               "d": d, "width": width, **provenance()}

    def timed(fn, *a):
        jax.block_until_ready(fn(*a))  # compile (and warm up)
        t = time.time()
        out = jax.block_until_ready(fn(*a))
        return out, time.time() - t

    one = jax.jit(train)
    params = init_params(cfg, key, x_mean=x.mean(0))
    sp = Sparsity(jnp.float32(0), jnp.int32(args.k))
    out, sec = timed(one, params, sp, data, key)
    splice = Splice(params=out.params, sparsity=sp, scale=jnp.float32(1.0), config=cfg)
    z = np.asarray(jax.jit(splice.encode)(jnp.asarray(xt)))
    xh = np.asarray(jax.jit(splice.reconstruct)(jnp.asarray(xt)))
    n = args.steps * args.batch
    results["ours"] = {"seconds": sec, "acts_per_s": n / sec,
                       "l0": float((z != 0).sum(-1).mean()), "fvu": fvu(xt, xh)}
    ks = np.maximum(np.arange(1, args.grid + 1) * args.k // 2, 1)  # k/2, k, 3k/2, ...
    gcfg = SAEConfig(kind="topk", d_in=d, width=width, k_max=int(ks.max()))
    grid = jax.jit(jax.vmap(make_train(gcfg, tcfg), in_axes=(0, 0, None, 0)))
    keys = jax.random.split(key, args.grid)
    gp = jax.vmap(lambda k: init_params(gcfg, k, x_mean=x.mean(0)))(keys)
    ks = jnp.asarray(ks, jnp.int32)
    _, gsec = timed(grid, gp, Sparsity(jnp.zeros(args.grid), ks), data, keys)
    results["ours_grid"] = {"saes": args.grid, "seconds": gsec,
                            "acts_per_s": n * args.grid / gsec}

    py = args.saelens_python
    if py is None or not Path(py).exists():
        results["saelens"] = {"skipped": f"no --saelens-python given or found ({py})"}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            np.save(tmp / "train.npy", x)
            np.save(tmp / "test.npy", xt)
            a = {"train": str(tmp / "train.npy"), "test": str(tmp / "test.npy"),
                 "z_out": str(tmp / "l0.npy"), "xhat_out": str(tmp / "xhat.npy"),
                 "width": width, "k": args.k, "batch": args.batch, "steps": args.steps,
                 "lr": args.lr, "dead_tokens": cfg.dead_tokens}
            proc = subprocess.run([py, "-c", SAELENS_SCRIPT, json.dumps(a)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
                results["saelens"] = {"skipped": f"SAELens run failed: {tail[0]}"}
            else:
                info = json.loads(proc.stdout.strip().splitlines()[-1])
                results["saelens"] = {**info, "acts_per_s": n / info["seconds"],
                                      "l0": float(np.load(tmp / "l0.npy").mean()),
                                      "fvu": fvu(xt, np.load(tmp / "xhat.npy"))}
    ours, sl = results["ours"], results["saelens"]
    if "acts_per_s" in sl:
        results["speedup"] = ours["acts_per_s"] / sl["acts_per_s"]
        results["equal_quality"] = bool(abs(ours["l0"] - sl["l0"]) <= 0.05 * sl["l0"]
                                        and abs(ours["fvu"] - sl["fvu"]) <= 0.01)
    print(f"TopK SAE, d={d}, width={width}, k={args.k}, batch={args.batch}, "
          f"steps={args.steps} ({n:,} activations), hook {args.hook}; shared 2-core CPU")
    print(f"{'':22s} {'acts/s':>12s} {'seconds':>9s} {'L0':>7s} {'FVU':>8s}")
    for name, r in (("ad.interp.sae", ours), ("SAELens", sl)):
        if "acts_per_s" in r:
            print(f"{name:22s} {r['acts_per_s']:12,.0f} {r['seconds']:9.2f} {r['l0']:7.2f} "
                  f"{r['fvu']:8.4f}")
        else:
            print(f"{name:22s} skipped: {r['skipped']}")
    g = results["ours_grid"]
    print(f"{'ad.interp.sae grid':22s} {g['acts_per_s']:12,.0f} {g['seconds']:9.2f}   "
          f"({g['saes']} SAEs in one vmapped call)")
    if "speedup" in results:
        print(f"speed-up {results['speedup']:.2f}x; equal quality (L0 ±5%, FVU ±0.01): "
              f"{results['equal_quality']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
