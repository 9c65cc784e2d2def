"""Fixtures for the explorer: a small Dark Room model built in a second, the app served on
a free local port, and a headless Chromium driven by Playwright.

Chromium is Debian's (``/usr/bin/chromium``, installed by ``.ci/run``): Playwright's own
browser downloads do not work here. Missing, the browser tests skip with a message
locally and fail in CI (``CI=true``).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest

from ad.interp.explorer.testing import chromium, chromium_path, serve


def chromium_or_skip() -> str:
    """The Chromium binary; a skip (locally) or a failure (CI=true) when it is missing."""
    path = chromium_path()
    if path:
        return path
    msg = ("Chromium not found (/usr/bin/chromium): install Debian's chromium "
           "(apt-get install -y chromium chromium-driver; .ci/run does)")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def build_model(run_dir: Path, scale: float = 8.0):
    """A small Dark Room-shaped model with random weights (kernels scaled up so that its
    policy is far from uniform and reacts to edits), saved as a finished run."""
    import envs
    from ad.checkpoints import save_model
    from ad.config import ArchConfig, ModelConfig
    from ad.model import init_params

    env = envs.make("darkroom")
    cfg = ModelConfig.for_env(env, ArchConfig(context=20, d_model=16, num_layers=2,
                                              num_heads=2, mlp_dim=32, dropout=0.0,
                                              obs_encoder="xy"))
    params = init_params(cfg, jax.random.key(3))
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: x * scale if "kernel" in str(p[-1]) or "embed" in str(p[-1]) else x,
        params)
    save_model(run_dir, cfg, params, env="darkroom", env_overrides={}, source="noise")
    return run_dir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("runs") / "darkroom-tiny" / "ad-seed0")


@pytest.fixture(scope="session")
def explorer(tiny_run):
    from ad.interp.explorer.app import Explorer

    return Explorer([tiny_run.parent.parent], default=str(tiny_run))


@pytest.fixture(scope="session")
def session(explorer, tiny_run):
    return explorer.session(str(tiny_run))


@pytest.fixture(scope="session")
def server(explorer):
    """The app on a free port of 127.0.0.1 (a uvicorn thread); yields the base URL."""
    from ad.interp.explorer.app import make_app

    with serve(make_app(explorer)) as url:
        yield url


@pytest.fixture(scope="session")
def browser():
    """A headless Debian Chromium (fresh profile) under Playwright."""
    with chromium(chromium_or_skip()) as context:
        yield context
