"""The explorer's JSON API over HTTP (the server the browser talks to) and its CLI."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from ad.interp.explorer import engine
from ad.interp.explorer.__main__ import ExplorerConfig, parse_args
from tests.explorer.helpers import walk


def call(url: str, body=None):
    """(status, JSON) of a GET (no body) or POST."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_models_and_model_description(server, tiny_run):
    status, r = call(server + "/api/models")
    assert status == 200 and r["default"] == str(tiny_run)
    bandit = tiny_run.parent.parent / "bandit-tiny" / "ad-seed0"
    runs = [m for m in r["models"] if not m["label"].startswith("zoo/")]  # then the zoo's
    assert [(m["id"], m["env"], m["label"]) for m in runs] == [
        (str(bandit), "bernoulli-bandit", "bandit-tiny/ad-seed0"),
        (str(tiny_run), "darkroom", "darkroom-tiny/ad-seed0")]
    status, info = call(server + f"/api/model?id={tiny_run}")
    assert status == 200 and info["kind"] == "darkroom" and info["size"] == 9
    assert len(info["tasks"]) == 16  # every held-out Dark Room goal
    assert info["tasks"][0]["goal"] == [0, 0] and info["tasks"][0]["optimum"] == 13.0
    assert info["features"] is None  # the SAE extension point: no features yet


def test_edit_over_http_is_the_engine_edit(server, session, tiny_run):
    stream = walk(session, 3, 10, seed=1)
    ctx = engine.stream_to_json(stream)
    status, v = call(server + "/api/edit", {"model": str(tiny_run), "task": 3, "context": ctx,
                                            "op": "drop_episode", "args": {"episode": 4},
                                            "ablation": {"heads": [[0, 1]]}})
    assert status == 200
    edited = session.edit(stream, "drop_episode", 3, episode=4)
    assert v["stream"] == engine.stream_to_json(edited)
    np.testing.assert_array_equal(np.asarray(v["policy"], np.float32), session.policy(edited))
    ab = engine.Ablation.parse(session.config, heads=[[0, 1]])
    np.testing.assert_array_equal(np.asarray(v["policy_ablated"], np.float32),
                                  session.policy(edited, ab))
    assert v["returns"] == engine.episode_returns(edited) and len(v["returns"]) == 9
    ref, _ = session.reference_policy(edited)
    np.testing.assert_allclose(v["divergence"], 0.5 * np.abs(session.policy(edited) - ref).sum(-1),
                               atol=1e-6)


@pytest.mark.parametrize("path,body,status,message", [
    ("/api/edit", {"op": "paint", "args": {}}, 400, "unknown edit 'paint'"),
    ("/api/edit", {"op": "flip_reward", "args": {"t": 999}}, 400, "step 999 outside"),
    ("/api/inside", {"t": 0, "ablation": {"mlps": [7]}}, 400, "MLP 7 outside"),
    ("/api/model?id=/no/such/run", None, 400, "no trained model here"),
])
def test_bad_requests_get_a_clear_error(server, session, tiny_run, path, body, status, message):
    if body is not None:
        ctx = engine.stream_to_json(walk(session, 3, 10, seed=1))
        body = {"model": str(tiny_run), "task": 3, "context": ctx, **body}
    got, r = call(server + path, body)
    assert got == status and message in r["error"], r


def test_cli_arguments(tmp_path, tiny_run):
    assert parse_args([]) == ExplorerConfig()
    cfg = parse_args(["--runs", str(tmp_path), "--model", str(tiny_run), "--port", "0"])
    assert (cfg.runs, cfg.model, cfg.port, cfg.host) == (str(tmp_path), str(tiny_run), 0,
                                                         "127.0.0.1")
    with pytest.raises(ValueError, match="no finished model there"):
        parse_args(["--model", str(tmp_path)])
    with pytest.raises(SystemExit):
        parse_args(["--help"])


def test_zoo_models_are_listed_and_loaded(tmp_path):
    """Every catalogued zoo configuration appears once, as its default seed's shipped run
    directory, and loads to the model ``ad.zoo.load`` gives."""
    import ad.zoo

    found = [e for e in engine.discover(tmp_path) if e.label.startswith("zoo/")]
    catalogue = ad.zoo.list()
    assert [e.label for e in found] == [f"zoo/{c.name}" for c in catalogue]
    from ad.zoo.build import FAMILIES

    want_env = [("bernoulli-bandit" if c.handbuilt else FAMILIES[c.family].env) for c in catalogue]
    assert [e.env for e in found] == want_env
    first, family = catalogue[0], catalogue[0].family
    model = engine.load_any(found[0].id)
    ref = ad.zoo.load(family, d_model=first.d_model, num_layers=first.num_layers,
                      num_heads=first.num_heads, mlp_dim=first.mlp_dim)
    assert model.config == ref.config


EVERY_HEAD = [[0, 0], [0, 1], [1, 0], [1, 1]]


def test_continue_under_an_ablation_also_returns_the_plain_continuation(server, session, tiny_run):
    stream = walk(session, 3, 10, seed=2)
    status, v = call(server + "/api/rollout", {
        "model": str(tiny_run), "task": 3, "episodes": 2, "seed": 5,
        "context": engine.stream_to_json(stream), "ablation": {"heads": EVERY_HEAD, "mlps": [0, 1]}})
    assert status == 200 and v["rollout_ablated_from"] == 200
    ab = engine.Ablation.parse(session.config, heads=EVERY_HEAD, mlps=[0, 1])
    ablated = session.rollout(3, 2, seed=5, prompt=stream, ablation=ab)
    plain = session.rollout(3, 2, seed=5, prompt=stream)
    assert v["stream"] == engine.stream_to_json(ablated)
    assert v["returns"] == engine.episode_returns(ablated)
    assert v["returns_plain"] == engine.episode_returns(plain)
    assert not np.array_equal(ablated.action[:, 200:], plain.action[:, 200:])  # it acts
