"""Responsiveness of the explorer, measured in a real browser (headless Debian Chromium).

On a trained model (default: the Dark Room model, ``runs/darkroom/ad-seed0``) the page
rolls out ``--episodes`` episodes (10 = a 200-step context), then a cycle of edits is
clicked, each followed by "back to the rollout" so every edit starts from the same
200-step context: flip a reward, delete a reward, delete an episode and duplicate one
(both change the context's length), move the goal, splice in a random agent's episode.
The page times each click to its updated action-distribution chart itself
(``performance.now()`` at the click, after the next animation frame once the chart is
redrawn: request, JSON, drawing); the script reads those times. Then "continue by 50
episodes" is clicked ``--continues`` times from the same context.

One warm-up round of every action comes first (first-use compile times are reported
separately, as ``cold_ms``): contexts are padded to a few bucket lengths, so after it no
edit recompiles. Writes a table to stdout and JSON to ``--out``; also saves screenshots.

    .venv/bin/python -m benchmarks.explorer_latency --model /path/to/runs/darkroom/ad-seed0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ad.utils import atomic_write_text, provenance  # noqa: E402

EDITS = ["#edit-flip", "#edit-delete-reward", "#edit-drop", "#edit-dup", "goal",
         "#edit-splice-random"]


def click_and_wait(page, action: str) -> dict:
    """Click one control; wait until the page timed it; its {op, ms, steps}."""
    n = page.evaluate("window.explorer.latencies.length")
    if action == "goal":  # move the goal: two clicks (the mode, then a cell)
        page.click("#mode-goal")
        page.click("#world rect[data-x='2'][data-y='6']")
    else:
        page.click(action)
    page.wait_for_function(f"window.explorer.latencies.length > {n} && window.explorer.busy === 0",
                           timeout=120_000)
    out = page.evaluate("window.explorer.latencies[window.explorer.latencies.length - 1]")
    if "error" in (page.locator("#status").get_attribute("class") or ""):
        raise RuntimeError(f"{action}: {page.locator('#status').text_content()}")
    return out


def set_step(page, t: int):
    page.evaluate(f"""() => {{ const s = document.getElementById('scrub');
        s.value = {t}; s.dispatchEvent(new Event('input')); }}""")
    page.wait_for_function("window.explorer.busy === 0")


def screenshot(page, out: Path):
    """The page on a held-out goal: 60 episodes, a reward flipped late in the context,
    head L1H0 ablated, the scrubber in the last episode."""
    out.mkdir(parents=True, exist_ok=True)
    page.select_option("#task", "1")
    page.wait_for_function("window.explorer.busy === 0 && window.explorer.view.stream.action.length === 200")
    click_and_wait(page, "button.continue[data-episodes='50']")
    page.check("#show-goal")
    T = page.evaluate("window.explorer.view.stream.action.length")
    reward = page.evaluate("window.explorer.view.stream.reward")
    paid = [i for i in range(T - 40, T - 20) if reward[i] > 0]
    set_step(page, paid[0] if paid else T - 30)
    click_and_wait(page, "#edit-flip")
    page.check("input.ablate-head[data-layer='1'][data-head='0']")
    page.wait_for_function("window.explorer.busy === 0")
    set_step(page, T - 12)
    page.wait_for_timeout(300)
    page.screenshot(path=str(out / "explorer.png"), full_page=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="runs/darkroom/ad-seed0", help="a trained run")
    p.add_argument("--episodes", type=int, default=10, help="episodes rolled out first")
    p.add_argument("--rounds", type=int, default=5, help="rounds of the edit cycle")
    p.add_argument("--continues", type=int, default=5, help="continue-by-50 clicks")
    p.add_argument("--out", default="docs/explorer/latency.json")
    p.add_argument("--screenshots", default="docs/explorer", help="folder for PNGs ('' = none)")
    a = p.parse_args(argv)

    from ad.interp.explorer.app import Explorer, make_app
    from ad.interp.explorer.testing import chromium, chromium_path, serve

    path = chromium_path()
    if path is None:
        print("error: Debian's chromium is needed (apt-get install -y chromium)", file=sys.stderr)
        return 2
    t_start = time.time()
    explorer = Explorer([Path(a.model).parent], default=a.model)
    with serve(make_app(explorer)) as url, chromium(path) as browser:
        page = browser.new_page()
        page.goto(url + "/")
        page.fill("#episodes", str(a.episodes))
        page.wait_for_function("window.explorer.version > 0 && window.explorer.busy === 0",
                               timeout=300_000)
        first = page.evaluate("window.explorer.latencies[0]")
        click_and_wait(page, "#play")  # the rollout with --episodes
        steps = page.evaluate("window.explorer.view.stream.action.length")
        set_step(page, steps - 5)
        cold = {}
        for action in EDITS:  # warm-up: one of each, first-use compiles included
            r = click_and_wait(page, action)
            cold[r["op"]] = r["ms"]
            click_and_wait(page, "#reset")
        r = click_and_wait(page, "button.continue[data-episodes='50']")
        cold[r["op"]] = r["ms"]
        click_and_wait(page, "#reset")

        edits, resets = [], []
        for _ in range(a.rounds):
            for action in EDITS:
                set_step(page, steps - 5)
                edits.append(click_and_wait(page, action))
                resets.append(click_and_wait(page, "#reset"))
        conts = []
        for _ in range(a.continues):
            conts.append(click_and_wait(page, "button.continue[data-episodes='50']"))
            click_and_wait(page, "#reset")

        if a.screenshots:
            screenshot(page, Path(a.screenshots))
        chromium_version = browser.browser.version if browser.browser else ""

    def summary(rows):
        ms = np.asarray([r["ms"] for r in rows])
        return {"n": len(ms), "p50_ms": float(np.percentile(ms, 50)),
                "p95_ms": float(np.percentile(ms, 95)), "max_ms": float(ms.max())}

    by_op = {op: summary([r for r in edits if r["op"] == op])
             for op in dict.fromkeys(r["op"] for r in edits)}
    record = {
        "model": a.model, "context_steps": steps, "episodes": a.episodes,
        "edits": summary(edits), "edits_by_op": by_op, "reset": summary(resets),
        "continue_50": summary(conts), "continue_50_steps_after": conts[0]["steps"],
        "cold_ms": cold, "first_load_ms": first["ms"] if first else None,
        "targets": {"edit_p95_ms": 300, "continue_50_ms": 2000},
        "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg(),
                    "note": "2 CPU cores shared with other jobs: timings are noisy"},
        "chromium": chromium_version, "wall_s": time.time() - t_start, **provenance()}
    atomic_write_text(Path(a.out), json.dumps(record, indent=1))
    print(f"{'action':24s} {'n':>3s} {'p50 ms':>8s} {'p95 ms':>8s} {'max ms':>8s}")
    for name, s in [("all edits", record["edits"]), *by_op.items(),
                    ("back to the rollout", record["reset"]),
                    ("continue by 50 episodes", record["continue_50"])]:
        print(f"{name:24s} {s['n']:3d} {s['p50_ms']:8.0f} {s['p95_ms']:8.0f} {s['max_ms']:8.0f}")
    print(f"first use (compiles): " + ", ".join(f"{k} {v:.0f} ms" for k, v in cold.items()))
    print(f"context {steps} steps; wrote {a.out} ({time.time() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
