"""Determinism as promised (issue 26, finding 3): with the real PPO source, history i is
bitwise the same whatever the shard size, the resume pattern or the device count.

The config is a small, chaotic PPO (lr 0.05, a 64-64 torso, rollouts of 64): batched
over 4 or 16 histories its floating point drifts apart within 1280 steps (before the
fix, when the vmap width followed the shard size, histories 3 and 10 differed between
shard sizes 4 and 16, and 3, 8 and 10 between 2 devices and 1), so equality here means
the width no longer depends on how the work is cut.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from ad.dataset import DatasetWriter, load_dataset
from experiments.collect import CollectConfig, collect
from tests.integrity.faults import ROOT

PPO = dict(env="darkroom", source="ppo", num_histories=16, chunk_size=16, verbose=False,
           source_overrides=dict(num_steps=1280, lr=0.05, hidden_sizes=(64, 64), rollout_len=64))


def _same(a, b):
    a, b = load_dataset(a, verify=True), load_dataset(b, verify=True)
    differ = [i for i in range(a.num_histories)
              if not (np.array_equal(a.history(i).action, b.history(i).action)
                      and np.array_equal(a.history(i).obs, b.history(i).obs))]
    assert differ == [], f"histories {differ} differ"
    np.testing.assert_array_equal(a.episode_returns, b.episode_returns)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return collect(CollectConfig(out=tmp_path_factory.mktemp("ppo") / "s16", shard_size=16, **PPO))


def test_ppo_histories_do_not_depend_on_shard_size_or_resumes(reference, tmp_path, monkeypatch):
    small = collect(CollectConfig(out=tmp_path / "s4", shard_size=4, **PPO))
    _same(reference, small)

    # interrupted after its first shard of 4, resumed with shards of 8
    real_write, calls = DatasetWriter.write_shard, []

    def interrupted(self, start, *args, **kwargs):
        calls.append(start)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_write(self, start, *args, **kwargs)
    monkeypatch.setattr(DatasetWriter, "write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        collect(CollectConfig(out=tmp_path / "mixed", shard_size=4, **PPO))
    monkeypatch.undo()
    _same(reference, collect(CollectConfig(out=tmp_path / "mixed", shard_size=8, **PPO)))


def test_ppo_histories_do_not_depend_on_the_device_count(reference, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    code = ("import jax; assert jax.device_count() == 2;"
            "from experiments.collect import CollectConfig, collect;"
            "from tests.integrity.test_determinism import PPO;"
            f"collect(CollectConfig(out={str(tmp_path / 'two')!r}, shard_size=16, **PPO))")
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    _same(reference, tmp_path / "two")
