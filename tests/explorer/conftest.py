"""Fixtures for the explorer: a small Dark Room model built in a second, the app served on
a free local port, and a headless Chromium driven by Playwright.

Chromium is Debian's (``/usr/bin/chromium``, installed by ``.ci/run``): Playwright's own
browser downloads do not work here. Missing, the browser tests skip with a message
locally and fail in CI (``CI=true``).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import jax
import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium_or_skip() -> str:
    """The Chromium binary; a skip (locally) or a failure (CI=true) when it is missing."""
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if path:
        return path
    msg = (f"Chromium not found at {CHROMIUM}: install Debian's chromium "
           f"(apt-get install -y chromium chromium-driver; .ci/run does)")
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
    import uvicorn

    from ad.interp.explorer.app import make_app

    srv = uvicorn.Server(uvicorn.Config(make_app(explorer), host="127.0.0.1", port=0,
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the explorer's server did not start")
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """A headless Debian Chromium (fresh profile) under Playwright."""
    path = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=path, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1760, "height": 1100})
        yield context
        context.close()
