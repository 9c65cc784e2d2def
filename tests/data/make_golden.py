"""Writes tests/data/golden_logits.npz: fixed models, inputs and their logits.

Run it only when a change to the model's function is deliberate (and say so in the commit):
``python tests/data/make_golden.py``. ``tests/ad/test_golden.py`` checks that the model
still maps the stored params and inputs to the stored logits within 1e-6.
"""

import json
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util

# Two configs that together cover both token layouts, both position schemes, the dense
# and the blocked attention, and the optional inputs (episode start, previous observation).
CONFIGS = {
    "step_rope": dict(num_actions=5, obs_encoder="xy", obs_shape=(2,), obs_num_values=9,
                      d_model=16, num_layers=2, num_heads=2, mlp_dim=32, dropout=0.0,
                      context=4, token_layout="step", positions="rope",
                      episode_start_token=True, prev_obs_token=True),
    "oar_alibi": dict(num_actions=5, obs_encoder="cell", obs_shape=(2,), obs_num_values=9,
                      d_model=16, num_layers=2, num_heads=2, mlp_dim=32, dropout=0.0,
                      context=3, token_layout="oar", positions="alibi"),
}
T = 12  # 3-4 bands: the "step" model takes the blocked path, the "oar" one too


def main():
    try:
        from ad.config import ModelConfig
        from ad.inputs import StepInputs
        from ad.model import ADTransformer, init_params
    except ImportError:  # the layout before ad/ was split
        from ad.model import ADTransformer, ModelConfig, StepInputs, init_params
    rng = np.random.default_rng(0)
    out = {}
    for name, kw in CONFIGS.items():
        cfg = ModelConfig(**kw)
        params = init_params(cfg, jax.random.PRNGKey(1))
        # larger-than-init weights so that every part of the network moves the logits
        params = jax.tree.map(lambda p: p + 0.3 * rng.standard_normal(p.shape).astype(p.dtype),
                              params)
        B = 3
        obs = rng.integers(0, 9, (B, T, 2)).astype(np.int32)
        prev_action = rng.integers(0, 6, (B, T)).astype(np.int32)
        prev_reward = rng.integers(0, 2, (B, T)).astype(np.float32)
        episode_start = rng.random((B, T)) < 0.2
        prev_obs = rng.integers(0, 9, (B, T, 2)).astype(np.int32)
        inputs = StepInputs(obs=obs, prev_action=prev_action, prev_reward=prev_reward,
                            episode_start=episode_start if cfg.episode_start_token else None,
                            prev_obs=prev_obs if cfg.prev_obs_token else None)
        logits = ADTransformer(cfg).apply({"params": params}, inputs, train=False)
        out[f"{name}/config"] = np.asarray(json.dumps(kw))
        for k, v in traverse_util.flatten_dict(jax.device_get(params), sep="/").items():
            out[f"{name}/params/{k}"] = np.asarray(v)
        for k, v in dict(obs=obs, prev_action=prev_action, prev_reward=prev_reward,
                         episode_start=episode_start, prev_obs=prev_obs).items():
            out[f"{name}/inputs/{k}"] = v
        out[f"{name}/logits"] = np.asarray(logits)
    path = Path(__file__).with_name("golden_logits.npz")
    np.savez_compressed(path, **out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
