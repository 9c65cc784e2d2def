"""The model against stored logits: a fixed input and its logits, to 1e-6 (guards against
drift). Regenerate ``tests/data/golden_logits.npz`` with ``tests/data/make_golden.py`` only
when a change to the model's function is deliberate."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util

from ad.config import ModelConfig
from ad.inputs import StepInputs
from ad.model import ADTransformer, init_params

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden_logits.npz"


@pytest.mark.parametrize("name", ["step_rope", "oar_alibi"])
def test_logits_equal_the_stored_ones(name):
    data = np.load(GOLDEN)
    cfg = ModelConfig(**json.loads(str(data[f"{name}/config"])))
    template = init_params(cfg, jax.random.PRNGKey(0))
    stored = {tuple(k[len(f"{name}/params/"):].split("/")): data[k]
              for k in data.files if k.startswith(f"{name}/params/")}
    flat = traverse_util.flatten_dict(template)
    assert set(flat) == set(stored), "parameter names or structure changed"
    params = traverse_util.unflatten_dict(stored)
    x = {k: data[f"{name}/inputs/{k}"] for k in
         ("obs", "prev_action", "prev_reward", "episode_start", "prev_obs")}
    inputs = StepInputs(obs=x["obs"], prev_action=x["prev_action"], prev_reward=x["prev_reward"],
                        episode_start=x["episode_start"] if cfg.episode_start_token else None,
                        prev_obs=x["prev_obs"] if cfg.prev_obs_token else None)
    logits = np.asarray(ADTransformer(cfg).apply({"params": params}, inputs, train=False))
    np.testing.assert_allclose(logits, data[f"{name}/logits"], rtol=0, atol=1e-6)
