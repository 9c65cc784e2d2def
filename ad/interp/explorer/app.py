"""The explorer's web layer: a small JSON API (Starlette) and one static page.

The page holds the current stream (what the model has lived, possibly edited) and sends
it with every request; the server is stateless apart from the loaded models, so every
endpoint is a plain function of its JSON body (easy to test with Starlette's
``TestClient`` and to extend: add a route that calls ``ModelSession``).

    GET  /                      the page (static/index.html; JS and CSS from static/)
    GET  /api/models            models found in the runs folders (and the zoo, if any)
    GET  /api/model?id=RUN      one model's description, its held-out tasks
    POST /api/rollout           {model, task, episodes, seed, context?, ablation?} -> view
    POST /api/edit              {model, task, context, op, args, ablation?} -> view
    POST /api/view              {model, task, context, ablation?} -> view
    POST /api/inside            {model, task, context, t, ablation?, donor?} -> inside
    POST /api/source            {model, task, episodes} -> the source's learning curve

A *view* is everything the page draws for a stream: the stream, the model's action
distribution at every step and at the next one (``policy``; ``policy_ablated`` with
the ablation), the reference agent's (``reference``), the total-variation distance
between the two per step (``divergence``), and the episode returns. A rollout that
continues a context under an ablation also returns the episode returns of the same
continuation without it (``returns_plain``).

Features (sparse-autoencoder features at the current step) are a later issue: the model
description carries ``"features": null`` and the page shows the panel only when it is
not null. A feature endpoint would be one more route here calling the SAE module.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ad.interp.explorer import engine
from ad.interp.explorer.engine import Ablation, ModelSession

STATIC = Path(__file__).parent / "static"


class Explorer:
    """The loaded models (one ``ModelSession`` each) and the runs folders searched."""

    def __init__(self, roots: list[str | Path], default: str | None = None):
        self.roots = [Path(r) for r in roots]
        self.default = default
        self.sessions: dict[str, ModelSession] = {}

    def models(self) -> list[dict]:
        found = engine.discover(*self.roots, *([self.default] if self.default else []))
        return [e._asdict() for e in found]

    def session(self, model_id: str) -> ModelSession:
        if not model_id:
            raise ValueError("no model given")
        if model_id not in self.sessions:
            self.sessions[model_id] = ModelSession(engine.load_any(model_id), model_id)
        return self.sessions[model_id]


def view(s: ModelSession, stream, ablation: Ablation) -> dict:
    """Everything the page draws for one stream (module docstring)."""
    policy = s.policy(stream)
    out = {"stream": engine.stream_to_json(stream), "policy": policy.tolist(),
           "policy_ablated": None, "returns": engine.episode_returns(stream)}
    if not ablation.empty:
        out["policy_ablated"] = s.policy(stream, ablation).tolist()
    try:
        ref, name = s.reference_policy(stream)
        out["reference"], out["reference_name"] = ref.tolist(), name
        out["divergence"] = (0.5 * np.abs(policy - ref).sum(-1)).tolist()
    except ValueError:
        out["reference"] = out["reference_name"] = out["divergence"] = None
    return out


def make_app(explorer: Explorer) -> Starlette:
    """The Starlette app over an ``Explorer``."""

    def endpoint(fn):
        async def wrapped(request: Request):
            try:
                body = await request.json() if request.method == "POST" else dict(request.query_params)
            except json.JSONDecodeError as e:
                return JSONResponse({"error": f"request body is not JSON: {e}"}, 400)
            try:  # the computations are blocking JAX calls: run them off the event loop
                return JSONResponse(await run_in_threadpool(fn, body))
            except (ValueError, KeyError, FileNotFoundError) as e:
                return JSONResponse({"error": f"{type(e).__name__}: {e}"}, 400)
            except Exception as e:  # noqa: BLE001 — shown in the page, logged here
                traceback.print_exc()
                return JSONResponse({"error": f"{type(e).__name__}: {e}"}, 500)
        return wrapped

    def parts(body):
        s = explorer.session(body.get("model", ""))
        ablation = Ablation.parse(s.config, **(body.get("ablation") or {}))
        stream = (engine.stream_from_json(body["context"], s.config)
                  if body.get("context") else None)
        return s, ablation, stream

    def models(body):
        return {"models": explorer.models(), "default": explorer.default}

    def model(body):
        return explorer.session(body.get("id", "")).info()

    def rollout(body):
        s, ablation, stream = parts(body)
        new = s.rollout(int(body.get("task", 0)), int(body.get("episodes", 10)),
                        int(body.get("seed", 0)), prompt=stream, ablation=ablation)
        out = view(s, new, ablation)
        if not ablation.empty and stream is not None:
            # the same continuation without the ablation (same key; the same compiled
            # rollout, since ablations are data): its effect on the in-context curve
            plain = s.rollout(int(body.get("task", 0)), int(body.get("episodes", 10)),
                              int(body.get("seed", 0)), prompt=stream)
            out["rollout_ablated_from"] = int(stream.action.shape[1])
            out["returns_plain"] = engine.episode_returns(plain)
        return out

    def edit(body):
        s, ablation, stream = parts(body)
        if stream is None:
            raise ValueError("edit: no context to edit")
        edited = s.edit(stream, str(body.get("op", "")), int(body.get("task", 0)),
                        **(body.get("args") or {}))
        return view(s, edited, ablation)

    def view_(body):
        s, ablation, stream = parts(body)
        if stream is None:
            raise ValueError("view: no context")
        return view(s, stream, ablation)

    def inside(body):
        s, ablation, stream = parts(body)
        if stream is None:
            raise ValueError("inside: no context")
        donor = (engine.stream_from_json(body["donor"], s.config) if body.get("donor")
                 else None)
        r = s.inside(stream, int(body["t"]), ablation, donor)
        return {"probs": r.probs.tolist(), "patterns": r.patterns.tolist(),
                "window_start": r.window_start, "lens": r.lens.tolist(),
                "lens_labels": r.lens_labels, "dla": r.dla.tolist(),
                "dla_labels": r.dla_labels}

    def source(body):
        s = explorer.session(body.get("model", ""))
        src = s.source_stream(int(body.get("task", 0)))
        returns = engine.episode_returns(src)
        return {"returns": returns[:int(body.get("episodes", len(returns)))]}

    routes = [
        Route("/", lambda request: FileResponse(STATIC / "index.html")),
        Route("/api/models", endpoint(models)),
        Route("/api/model", endpoint(model)),
        Route("/api/rollout", endpoint(rollout), methods=["POST"]),
        Route("/api/edit", endpoint(edit), methods=["POST"]),
        Route("/api/view", endpoint(view_), methods=["POST"]),
        Route("/api/inside", endpoint(inside), methods=["POST"]),
        Route("/api/source", endpoint(source), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes)
