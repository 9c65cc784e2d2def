"""The SAE feature browser renders in headless Chromium, from disk, with no network.

Synthetic pages for both context kinds (bandit pull sequences, Dark Room paths): the list
has one row per feature, a header click sorts it, a row click draws the feature's
histogram and contexts, and the page logs no errors. Skips locally without
``/usr/bin/chromium`` or Playwright; fails under ``CI=true``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ad.interp.sae.browser import write_site

CHROMIUM = Path("/usr/bin/chromium")


def _need_browser():
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "playwright is not installed (pip install playwright)"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser test needs Chromium under CI: {missing}")
        pytest.skip(missing)


def _page(env: str, n: int = 7) -> dict:
    rng = np.random.default_rng(0)
    feats = []
    for f in range(n):
        if env == "bandit":
            ctx = [{"h": 0, "t": 5, "act": 1.0 + c, "actions": [0, 1, 2, 1, 1],
                    "rewards": [0, 1, 0, 1, 1], "next": 1, "means": [0.1, 0.9, 0.3, 0.2, 0.5]}
                   for c in range(3)]
        else:
            ctx = [{"h": 1, "t": 30, "act": 2.0, "episode": 1, "path": [[4, 4], [4, 3], [5, 3]],
                    "rewards": [0, 1], "goal": [5, 3]} for _ in range(3)]
        feats.append({"id": f, "freq": float(rng.random()), "max": 3.0, "label": "goal_found"
                      if f == 2 else "", "label_auroc": 0.95 if f == 2 else None,
                      "top_var": "at_goal", "top_auroc": 0.7, "logits": [0.1, -0.2, 0, 0, 0.1],
                      "hist": rng.integers(0, 9, 24).tolist(), "edges": [0.0, 3.0],
                      "contexts": ctx})
    return {"title": f"test {env}", "hook": "blocks.0.hook_resid_post", "env": env,
            "num_features": n + 1, "alive": n, "grid": 9, "features": feats}


def test_browser_renders_sorts_and_draws_from_disk(tmp_path):
    _need_browser()
    from playwright.sync_api import sync_playwright

    index = write_site(tmp_path / "site", [_page("bandit"), _page("darkroom")])
    html = (tmp_path / "site" / "sae-00.html").read_text()
    assert "http://" not in html and "https://" not in html  # nothing fetched
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page()
        errors, requests = [], []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("request", lambda r: requests.append(r.url))
        page.goto(index.as_uri())
        assert page.locator("li a").count() == 2
        for name, drawn in (("sae-00.html", "svg rect"), ("sae-01.html", "svg polyline")):
            page.goto((tmp_path / "site" / name).as_uri())
            rows = page.locator("tr[data-id]")
            assert rows.count() == 7
            page.locator("th[data-k='id']").click()  # sort by id, descending first
            assert page.locator("tr[data-id]").first.get_attribute("data-id") == "6"
            page.locator("th[data-k='id']").click()
            assert page.locator("tr[data-id]").first.get_attribute("data-id") == "0"
            page.locator("tr[data-id='2']").click()
            assert "feature 2" in page.locator("#detail h1").inner_text()
            assert "goal_found" in page.locator("#detail").inner_text()
            assert page.locator("#detail svg.hist rect").count() == 24
            assert page.locator(f"#detail .ctx {drawn}").count() >= 3
        browser.close()
    assert not errors, errors
    assert all(u.startswith("file://") for u in requests), requests
