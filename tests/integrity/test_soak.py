"""A longer random-kill soak (``-m slow``, ~2 min): distillation and collection killed
again and again at random named fault points, then finished; the results must equal an
uninterrupted run bit for bit and no temp file may be left."""

from __future__ import annotations

import random

import numpy as np
import pytest

from ad.train import distill
from tests.integrity.faults import (collect_code, distill_code, make_dataset, params_bytes,
                                    run_config, run_killed, temp_files)

pytestmark = pytest.mark.slow


def test_random_kills_during_distillation_and_collection(tmp_path):
    rng = random.Random(26)
    data = make_dataset(tmp_path / "data", shard_size=2)
    steps = dict(num_steps=16, checkpoint_every=1)
    reference = distill(run_config(data, tmp_path / "ref", **steps))

    out = tmp_path / "run"
    kills = 0
    for _ in range(12):  # until a try is not killed (the run finished)
        fault = f"{rng.choice(['checkpoint_write'] * 3 + ['model_write'])}:{rng.randint(1, 3)}"
        if run_killed(distill_code(data, out, **steps), fault).returncode != -9:
            break
        kills += 1
    distill(run_config(data, out, **steps))
    assert kills >= 3 and params_bytes(out) == params_bytes(reference) and not temp_files(out)

    ds = tmp_path / "ds"
    for _ in range(6):
        run_killed(collect_code(ds, shard_size=2), f"shard_write:{rng.randint(1, 3)}")
    make_dataset(ds, shard_size=2)
    for f in data.rglob("*.npy"):
        np.testing.assert_array_equal(np.load(f), np.load(ds / f.relative_to(data)))
    assert not list(ds.glob(".tmp-*"))
