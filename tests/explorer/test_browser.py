"""The explorer in a real browser (headless Debian Chromium under Playwright).

The page is loaded, a model picked, a reward flipped and a head ablated by clicking; the
numbers the page shows (read at full precision from its data, not from pixels) must equal
what the library computes for the same edited context and the same ablation.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from ad import hooks
from ad.interp import streams
from ad.interp.cache import run_with_cache
from ad.interp.explorer import engine

_forward = jax.jit(hooks.run_with_hooks, static_argnums=1)


def wait_version(page, after: int) -> int:
    """Wait until the policy chart was redrawn after version ``after``; its version."""
    page.wait_for_function(f"window.explorer.version > {after} && window.explorer.busy === 0",
                           timeout=60_000)
    return page.evaluate("window.explorer.version")


def shown(page, config) -> dict:
    """What the page shows now: the policy chart's numbers and the stream they are for."""
    svg = page.locator("#policy")
    ablated = svg.get_attribute("data-ablated")
    return {"probs": np.asarray(json.loads(svg.get_attribute("data-probs"))),
            "ablated": np.asarray(json.loads(ablated)) if ablated else None,
            "step": int(svg.get_attribute("data-step")),
            "stream": engine.stream_from_json(page.evaluate("window.explorer.view.stream"),
                                              config)}


def set_step(page, t: int):
    before = page.evaluate("window.explorer.version")
    page.evaluate(f"""() => {{ const s = document.getElementById('scrub');
        s.value = {t}; s.dispatchEvent(new Event('input')); }}""")
    return wait_version(page, before)


def library_probs(session, stream, t, edits=None):
    q = session.with_query(stream)
    # jitted (one compile per length) rather than op by op: the same library forward
    logits = _forward(session.model.params, session.config,
                      streams.to_inputs(q, session.config), edits)
    return np.asarray(jax.nn.softmax(logits[0, t]))


@pytest.fixture(scope="module")
def page(browser, server, session, tiny_run):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    wait_version(page, 0)
    # pick the Dark Room model (the runs folder also holds a bandit model)
    options = page.locator("#model option").evaluate_all("os => os.map(o => o.value)")
    runs = [o for o in options if "/ad/zoo/weights/" not in o]  # the zoo's models follow
    assert len(runs) == 2 and str(tiny_run) in runs
    v = page.evaluate("window.explorer.version")
    page.select_option("#model", str(tiny_run))
    wait_version(page, v)
    assert page.evaluate("window.explorer.info.kind") == "darkroom"
    yield page
    assert not errors, errors
    page.close()


def test_flip_a_reward_updates_the_shown_policy_to_the_library_one(page, session):
    before = shown(page, session.config)
    T = before["stream"].action.shape[1]
    assert T == 200 and before["step"] == T  # 10 episodes rolled out; the next step shown
    t = T - 3
    set_step(page, t)
    v = page.evaluate("window.explorer.version")
    page.click("#edit-flip")
    wait_version(page, v)
    set_step(page, T)  # the next step reads the flipped reward through the context
    after = shown(page, session.config)
    want_stream = streams.set_reward(before["stream"], 0, t, 1.0 - before["stream"].reward[0, t])
    for a, b in zip(after["stream"], want_stream):
        np.testing.assert_array_equal(a, b)
    assert np.abs(after["probs"] - before["probs"]).max() > 1e-3  # the edit shows
    np.testing.assert_allclose(after["probs"], library_probs(session, want_stream, T),
                               atol=2e-6)
    page.screenshot(path=str(_shot("edit")), full_page=False)


def test_ablate_a_head_shows_the_library_ablation_and_dla(page, session):
    v = page.evaluate("window.explorer.version")
    page.click("#reset")  # back to the rollout, unedited
    wait_version(page, v)
    state = shown(page, session.config)
    stream, t = state["stream"], state["step"]
    v = page.evaluate("window.explorer.version")
    dla_before = page.evaluate("window.explorer.inside && window.explorer.inside.dla")
    page.check("input.ablate-head[data-layer='1'][data-head='0']")
    wait_version(page, v)
    page.wait_for_function(
        "window.explorer.inside && JSON.stringify(window.explorer.inside.dla) !== "
        f"{json.dumps(json.dumps(dla_before))}", timeout=60_000)
    cfg = session.config
    edits = {"blocks.1.attn.hook_z": hooks.ablate("blocks.1.attn.hook_z", cfg, heads=[0])}
    got = shown(page, session.config)
    np.testing.assert_allclose(got["ablated"], library_probs(session, stream, t, edits),
                               atol=2e-6)
    assert np.abs(got["ablated"] - got["probs"]).max() > 1e-4
    # the DLA figure: the chosen action's attribution minus the mean, per component
    a = int(page.evaluate("document.getElementById('dla-action').value"))
    values = np.asarray(json.loads(page.locator("#dla").get_attribute("data-values")))
    q = session.with_query(stream)
    _, cache = run_with_cache(session.model.params, cfg, streams.to_inputs(q, cfg),
                              hooks_=edits)
    per_action = np.stack([np.asarray(cache.dla(b)[0])[:, 0, t] for b in range(cfg.num_actions)], -1)
    np.testing.assert_allclose(values, per_action[:, a] - per_action.mean(-1), atol=1e-4)
    head = engine._dla_labels(cfg).index("L1H0")
    assert abs(values[head]) < 1e-6  # the ablated head writes nothing
    page.screenshot(path=str(_shot("inside")), full_page=False)


def _shot(name: str):
    import tempfile
    from pathlib import Path

    out = Path(tempfile.gettempdir()) / "explorer-test-shots"
    out.mkdir(exist_ok=True)
    return out / f"{name}.png"


def test_draw_a_trajectory_and_move_the_goal_by_clicking_the_grid(page, session):
    v = page.evaluate("window.explorer.version")
    page.click("#reset")
    wait_version(page, v)
    before = shown(page, session.config)
    set_step(page, 45)  # in episode 2
    page.click("#mode-draw")
    for x, y in [(4, 3), (3, 3), (3, 2)]:
        page.click(f"#world rect[data-x='{x}'][data-y='{y}']")
    v = page.evaluate("window.explorer.version")
    page.click("#draw-done")
    wait_version(page, v)
    task = int(page.evaluate("window.explorer.task"))
    want = session.edit(before["stream"], "splice_drawn", task, episode=2,
                        cells=[[4, 3], [3, 3], [3, 2]])
    got = shown(page, session.config)
    for a, b in zip(got["stream"], want):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got["stream"].action[0, 40:44], [4, 2, 4, 0])
    # move the goal: click the mode, then a cell; rewards recomputed for the new goal
    v = page.evaluate("window.explorer.version")
    page.click("#mode-goal")
    page.click("#world rect[data-x='3'][data-y='2']")
    wait_version(page, v)
    moved = shown(page, session.config)
    want = streams.move_goal(want, np.array([3, 2]), session.env)
    for a, b in zip(moved["stream"], want):
        np.testing.assert_array_equal(a, b)
    assert moved["stream"].reward[0, 42] == 1.0  # the drawn path ends on the new goal
    np.testing.assert_allclose(moved["probs"], library_probs(session, want, moved["step"]),
                               atol=2e-6)
