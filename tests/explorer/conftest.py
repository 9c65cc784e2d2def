"""Fixtures for the explorer: a small Dark Room model built in a second, the app served on
a free local port, and a headless Chromium driven by Playwright.

Chromium is Debian's (``/usr/bin/chromium``, installed by ``.ci/run``): Playwright's own
browser downloads do not work here. Missing, the browser tests skip with a message
locally and fail in CI (``CI=true``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ad.interp.explorer.testing import chromium, chromium_path, serve
from tests.explorer.helpers import build_model


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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A runs folder with two models: the Dark Room one used by the tests (returned, the
    page's default) and a bandit one (so that picking a model is a choice)."""
    runs = tmp_path_factory.mktemp("runs")
    build_model(runs / "bandit-tiny" / "ad-seed0", env_name="bernoulli-bandit")
    return build_model(runs / "darkroom-tiny" / "ad-seed0")


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


@pytest.fixture(scope="module")
def browser():
    """A headless Debian Chromium (fresh profile) under Playwright, closed at the end of the
    module: a Playwright sync session left open would make any later one in this worker
    (e.g. the SAE browser test) fail with "Sync API inside the asyncio loop"."""
    with chromium(chromium_or_skip()) as context:
        yield context
