"""Driving the explorer from Python: the app served from a thread on a free local port and
a headless Debian Chromium under Playwright (used by ``tests/explorer`` and
``benchmarks/explorer_latency.py``).

Chromium is Debian's (``apt-get install chromium``; ``.ci/run`` installs it): Playwright's
own browser downloads do not work here, so it is pointed at the binary. As root Chromium
needs ``--no-sandbox``; the other flags keep it from reaching the network.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    """Debian's Chromium (``$CHROMIUM`` or ``/usr/bin/chromium`` or on PATH), or None."""
    path = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    return path if os.path.exists(path) else shutil.which("chromium")


@contextlib.contextmanager
def serve(app, timeout: float = 30.0):
    """Serve the Starlette ``app`` on a free port of 127.0.0.1 from a thread; yields the
    base URL and stops the server on exit."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + timeout
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the explorer's server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def chromium(path: str, viewport=(1760, 1100)):
    """A headless Chromium with a fresh profile (a Playwright ``BrowserContext``)."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="explorer-chromium-") as profile, \
            sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=path, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": viewport[0], "height": viewport[1]})
        try:
            yield context
        finally:
            context.close()
