"""Issue 26 findings reproduced with the public API of both the old code (185e0a1) and the
new one: run from a checkout's root, `PYTHONPATH=. .venv/bin/python tests/integrity/findings.py`
(copy the file into a checkout of the old commit to see the old behaviour).
Prints one line per finding: what happened. (Finding 3 has its own test:
tests/integrity/test_determinism.py, run against 185e0a1 with chunk_size removed.)"""
import fcntl, json, os, shutil, subprocess, sys, tempfile, warnings
from pathlib import Path
warnings.simplefilter("ignore")
from ad.checkpoints import load_model
from ad.dataset import load_dataset
from ad.train import DistillConfig, distill
from experiments.collect import CollectConfig, collect

W = Path(tempfile.mkdtemp())
C = dict(env="darkroom", source="noise", source_overrides={"num_steps": 100}, num_histories=16, shard_size=8, verbose=False)
T = dict(context=4, window=8, d_model=16, num_layers=1, num_heads=2, mlp_dim=32, dropout=0.0, batch_size=8,
         lr=3e-3, warmup_steps=2, log_every=1, progress=False, num_steps=4, checkpoint_every=2)
def attempt(label, fn):
    try:
        r = fn(); print(f"{label}: NO ERROR {r if r is not None else ''}")
    except BaseException as e:
        print(f"{label}: {type(e).__name__}: {str(e)[:160]}")
data = collect(CollectConfig(out=W / "data", **C))
run = distill(DistillConfig.from_dict({**T, "dataset": str(data), "out": str(W / "run")}))
def copy(src, name): d = W / name; shutil.copytree(src, d); return d
# 1 + 7: flipped weights; num_layers edit; truncated weights
d = copy(run, "m1"); p = d / "model/params.msgpack"; b = bytearray(p.read_bytes())
for i in range(len(b) // 2, len(b) // 2 + 64): b[i] ^= 0x55
p.write_bytes(bytes(b)); attempt("F1 flipped params, load_model", lambda: load_model(d) and "loaded")
d = copy(run, "m2"); c = json.loads((d / "model/config.json").read_text()); c["model_config"]["num_layers"] = 2
(d / "model/config.json").write_text(json.dumps(c)); attempt("F7 num_layers 1->2 in config.json", lambda: load_model(d) and "loaded")
d = copy(run, "m3"); p = d / "model/params.msgpack"; p.write_bytes(p.read_bytes()[:100]); attempt("F7 truncated params", lambda: load_model(d))
# 2: rewards NaN (checksums not updated) -> what distill does
d = copy(data, "d1"); import numpy as np
f = d / "shard-00000000-00000008/reward.npy"; a = np.load(f); a[:2] = np.nan; raw = bytearray(f.read_bytes()); raw[len(raw) - a.nbytes:] = a.tobytes(); f.write_bytes(bytes(raw))
attempt("F2 rewards NaN, distill", lambda: json.loads((distill(DistillConfig.from_dict({**T, "dataset": str(d), "out": str(W / "r2")})) / "metrics.jsonl").read_text().splitlines()[-1])["loss"])
d = copy(data, "d2"); m = json.loads((d / "meta.json").read_text()); m["spec"]["env"] = "darkroom-hard"; (d / "meta.json").write_text(json.dumps(m))
attempt("F2 spec.env edited, load_dataset(verify=True)", lambda: load_dataset(d, verify=True).spec.env)
# 5: finished run moved to another folder
r5 = copy(run, "moved-run"); attempt("F5 moved run dir", lambda: distill(DistillConfig.from_dict({**T, "dataset": str(data), "out": str(r5)})) and "resumed")
# 6: a finished dataset while another process holds .lock
fd = os.open(data / ".lock", os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX)
attempt("F6 collect over a finished dataset while .lock is held", lambda: collect(CollectConfig(out=data, **C)) and "ok")
fcntl.flock(fd, fcntl.LOCK_UN); os.close(fd)
# 8 + 9 (evaluation): the pipeline on a tiny setting
from experiments import run as run_mod
from experiments.settings import Setting
TINY = Setting(name="tiny-bandit", env="bernoulli-bandit", source="thompson", histories=16,
    source_overrides=dict(num_steps=20), distill=dict(context=20, window=20, d_model=16, num_layers=1, num_heads=2,
    mlp_dim=32, dropout=0.0, batch_size=8, num_steps=3, log_every=3, warmup_steps=1), eval_episodes=20, eval_tasks=4, report_episodes=(5, 15))
K = dict(data_root=W / "pd", runs_root=W / "pr", out_root=W / "po", quiet=True)
attempt("F8 --distill-override lr=abc", lambda: run_mod.run(TINY, distill_overrides=run_mod._parse_kv(["lr=abc"]), **{**K, "runs_root": W / "p8a"}) and "ran")
attempt("F8 --seeds -1", lambda: run_mod.run(TINY, seeds=(-1,), **{**K, "runs_root": W / "p8b"}) and "ran")
attempt("F8 hidden_sizes=64,64 (collect override)", lambda: __import__("experiments.collect", fromlist=["x"]).collect(CollectConfig(
    out=W / "p8c", env="darkroom", source="ppo", source_overrides=dict([__import__("experiments.collect", fromlist=["x"]).parse_override("hidden_sizes=64,64"), ("num_steps", 128)]),
    num_histories=2, verbose=False)) and "collected")
run_mod.run(TINY, **K)
import io, contextlib
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    rec = run_mod.run(TINY, **{**K, "quiet": False})
print("F9 evaluation rerun:", "reused" if "reusing" in buf.getvalue() else f"recomputed ({rec['timings'].get('evaluate_s', 0):.1f} s), not said")
# 9: "bytes on disk" message; metadata without 'reward'
d = copy(data, "d3"); m = json.loads((d / "meta.json").read_text()); m["shards"][0]["files"]["reward.npy"]["bytes"] += 1; m.pop("content_blake2b", None); (d / "meta.json").write_text(json.dumps(m))
attempt("F9 meta bytes+1", lambda: load_dataset(d))
d = copy(data, "d4"); m = json.loads((d / "meta.json").read_text()); del m["leaves"]["reward"]; [s["files"].pop("reward.npy") for s in m["shards"]]; m.pop("content_blake2b", None); (d / "meta.json").write_text(json.dumps(m))
attempt("F9 meta without 'reward', history(0)", lambda: load_dataset(d).history(0) and "read")
shutil.rmtree(W)
